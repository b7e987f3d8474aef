//! The kubernetes target: manifests for `kubectl apply -k` (guard's Deployment, disruption
//! budget and LoadBalancer Service; MLflow's Deployment, ClusterIP Service, migration Job and
//! NetworkPolicy; optionally PostgreSQL; cert-manager's Issuer and Certificate), the Secrets
//! they read, and the Dockerfiles of the two images. guard serves the certificate cert-manager
//! writes, from a whole-Secret mount so renewals reach the running pods.

use crate::mlflow::{self, PG_DATABASE, PG_USER};
use crate::model::{Artifacts, Challenge, Deployment, Tls, STOP_TIMEOUT_SECS};
use crate::secrets::Secrets;
use crate::yaml::{document, documents, int, map, s, strs, Node};
use crate::RenderedFile;

/// The host of the placeholder DSN written without `--with-postgres`; `--force` keeps any
/// other value an operator put there.
pub(crate) const DATABASE_PLACEHOLDER_HOST: &str = "database.example.com";
/// host:port of the PostgreSQL `--with-postgres` runs (its Service).
pub(crate) const IN_NAMESPACE_DATABASE: &str = "postgres:5432";

/// guard's TLS listener inside its pod (unprivileged: the pod runs without capabilities).
const GUARD_PORT: u16 = 8443;
const MLFLOW_PORT: u16 = 5000;
const POSTGRES_PORT: u16 = 5432;
/// The uid and gid of the `guard` user in the written Dockerfile; MLflow runs as it too.
const APP_UID: i64 = 10001;
/// The `postgres` user of the official image.
const POSTGRES_UID: i64 = 999;
const POSTGRES_IMAGE: &str = "postgres:17";

/// Where guard's pod mounts its three volumes. Whole directories, never `subPath`: a subPath
/// mount keeps the file it saw first, so a renewed certificate or a new user would never arrive.
const CONFIG_DIR: &str = "/etc/guard/config";
const TLS_DIR: &str = "/etc/guard/tls";
/// guard's state directory is the guard-auth Secret: users, tokens and the session key file
/// every replica shares (guard only reads them when they exist).
const STATE_DIR: &str = "/var/lib/guard";
const MLFLOW_ARTIFACTS: &str = "/mlflow/artifacts";

/// Object names; Secrets and ConfigMaps are referenced by these and must exist.
pub(crate) const GUARD: &str = "guard";
pub(crate) const GUARD_CONFIG: &str = "guard-config";
pub(crate) const GUARD_AUTH: &str = "guard-auth";
pub(crate) const GUARD_TLS: &str = "guard-tls";
pub(crate) const MLFLOW: &str = "mlflow";
pub(crate) const MLFLOW_DATABASE: &str = "mlflow-database";
pub(crate) const MLFLOW_S3: &str = "mlflow-s3";
pub(crate) const MLFLOW_MIGRATE: &str = "mlflow-migrate";
pub(crate) const POSTGRES: &str = "postgres";
pub(crate) const ACME_DNS01: &str = "acme-dns01";

/// The files of the guard-auth Secret, as written under auth/ (its keys are the file names).
pub(crate) const AUTH_FILES: [&str; 4] = ["users.htpasswd", "groups", "tokens.json", "session-keys.json"];

/// Secret values are read by the app user only: 0440 with the pod's fsGroup (as decimal, the
/// only way YAML 1.1 and 1.2 read a mode alike).
const SECRET_MODE: i64 = 0o440;

/// Renders every file. Pure: the secrets come in as a parameter.
pub fn render(d: &Deployment, secrets: &Secrets) -> Vec<RenderedFile> {
    let k = &d.kubernetes;
    let mut files = vec![
        RenderedFile::new("kustomization.yaml", kustomization(d), 0o644),
        RenderedFile::new("namespace.yaml", namespace(d), 0o644),
        RenderedFile::new("secrets.yaml", secrets_file(d, secrets), 0o600),
        RenderedFile::new("auth/users.htpasswd", String::new(), 0o600),
        // Roles (`guard role set`), beside the users file where guard looks for them.
        RenderedFile::new("auth/groups", String::new(), 0o600),
        RenderedFile::new("auth/tokens.json", "{\"version\": 1, \"tokens\": []}\n".into(), 0o600),
        RenderedFile::new(
            "auth/session-keys.json",
            secrets.session_keys.expose().to_string(),
            0o600,
        ),
    ];
    if k.with_postgres {
        files.push(RenderedFile::new("postgres.yaml", postgres(d), 0o644));
    }
    files.push(RenderedFile::new("mlflow.yaml", mlflow_file(d), 0o644));
    files.push(RenderedFile::new("guard.yaml", guard_file(d), 0o644));
    files.push(RenderedFile::new("certificate.yaml", certificate(d), 0o644));
    files.push(RenderedFile::new(
        "Dockerfile",
        crate::image::guard_dockerfile("guard deploy kubernetes"),
        0o644,
    ));
    files.push(RenderedFile::new(
        ".dockerignore",
        crate::image::DOCKERIGNORE.into(),
        0o644,
    ));
    files.push(RenderedFile::new(
        "mlflow/Dockerfile",
        mlflow::dockerfile(d, "guard deploy kubernetes").unwrap_or_default(),
        0o644,
    ));
    files
}

/// The commands to run after writing, in order.
pub fn next_steps(d: &Deployment) -> Vec<String> {
    let out = d.out_dir.display();
    let k = &d.kubernetes;
    let ns = &k.namespace;
    let mut steps = vec![
        "install cert-manager once per cluster if it is not there yet: https://cert-manager.io/docs/installation/"
            .to_string(),
        build_and_ship(
            &k.image,
            &out.to_string(),
            "guard's image: the guard binary beside the Dockerfile",
        ),
        build_and_ship(
            &k.mlflow_image,
            &format!("{out}/mlflow"),
            "MLflow with the PostgreSQL driver",
        ),
    ];
    if !k.with_postgres {
        steps.push(format!(
            "edit {out}/secrets.yaml: set uri in Secret {MLFLOW_DATABASE} to your PostgreSQL database (or run again with --with-postgres to try things out)"
        ));
    }
    if let Some(uri) = d.artifacts.s3_uri() {
        steps.push(format!(
            "edit {out}/secrets.yaml: set the AWS keys in Secret {MLFLOW_S3} for {uri} (leave them empty for a pod identity)"
        ));
    }
    if let Tls::Acme { .. } = d.tls {
        if k.challenge == Challenge::Dns01 {
            steps.push(format!(
                "edit {out}/certificate.yaml and {out}/secrets.yaml: the DNS-01 solver is written for Cloudflare (Secret {ACME_DNS01}); put your DNS provider's block there"
            ));
        }
    }
    steps.push(format!(
        "guard adduser --users {out}/auth/users.htpasswd alice    # guard starts once a user (or a token: guard token create --tokens {out}/auth/tokens.json NAME) exists"
    ));
    steps.push(format!("kubectl apply -k {out}"));
    steps.push(format!(
        "kubectl -n {ns} wait --for=condition=complete --timeout=15m job/{MLFLOW_MIGRATE} && kubectl -n {ns} rollout status deployment/{GUARD}    # MLflow pods restart until the schema is there"
    ));
    match &d.tls {
        Tls::Acme { domains, .. } => {
            steps.push(format!(
                "point DNS for {} at the address of: kubectl -n {ns} get service {GUARD}",
                domains.join(", ")
            ));
            if k.challenge == Challenge::Http01 {
                steps.push(format!(
                    "HTTP-01: port 80 of {} must reach the cluster's ingress controller, which serves cert-manager's solver (guard's Service is 443 only); otherwise use --acme-challenge dns-01",
                    domains.join(", ")
                ));
            }
            steps.push(format!("open https://{}/", domains[0]));
        }
        Tls::SelfSigned => {
            steps.push(format!(
                "kubectl -n {ns} port-forward service/{GUARD} 8443:443, then open https://localhost:8443/ (self-signed certificate)"
            ));
        }
    }
    steps.push(format!(
        "later users: guard adduser --users {out}/auth/users.htpasswd bob && kubectl apply -k {out}    # the pods re-read the Secret within about two minutes, no restart"
    ));
    steps
}

/// Builds an image and gets it to the cluster: pushed when its name has a registry path, else
/// (the local default names) loaded into a local cluster's nodes.
fn build_and_ship(image: &str, context: &str, what: &str) -> String {
    if image.contains('/') {
        format!("docker build -t {image} {context} && docker push {image}    # {what}")
    } else {
        format!(
            "docker build -t {image} {context} && kind load docker-image {image}    # {what}; or minikube image load; for a remote cluster pass --image REGISTRY/NAME:TAG (--mlflow-image too) and push"
        )
    }
}

/// The labels of one component. Selectors use these two; `part-of` groups the whole stack.
fn labels(name: &str, component: &str) -> Node {
    map(vec![
        ("app.kubernetes.io/name", s(name)),
        ("app.kubernetes.io/component", s(component)),
    ])
}

fn labels_with_part_of(name: &str, component: &str) -> Node {
    let mut l = labels(name, component);
    l.push("app.kubernetes.io/part-of", s("guard"));
    l
}

fn metadata(name: &str, ns: &str, labels: Option<Node>) -> Node {
    let mut m = map(vec![("name", s(name)), ("namespace", s(ns))]);
    if let Some(l) = labels {
        m.push("labels", l);
    }
    m
}

fn object(api: &str, kind: &str, metadata: Node, rest: Vec<(&str, Node)>) -> Node {
    let mut o = map(vec![("apiVersion", s(api)), ("kind", s(kind)), ("metadata", metadata)]);
    for (k, v) in rest {
        o.push(k, v);
    }
    o
}

fn kustomization(d: &Deployment) -> String {
    let mut resources = vec!["namespace.yaml", "secrets.yaml"];
    if d.kubernetes.with_postgres {
        resources.push("postgres.yaml");
    }
    resources.extend(["mlflow.yaml", "guard.yaml", "certificate.yaml"]);
    let files: Vec<String> = AUTH_FILES.iter().map(|f| format!("auth/{f}")).collect();
    let doc = map(vec![
        ("apiVersion", s("kustomize.config.k8s.io/v1beta1")),
        ("kind", s("Kustomization")),
        ("resources", strs(&resources)),
        (
            "secretGenerator",
            Node::List(vec![map(vec![
                ("name", s(GUARD_AUTH)),
                ("namespace", s(&d.kubernetes.namespace)),
                ("files", strs(&files)),
            ])]),
        ),
        (
            "generatorOptions",
            map(vec![("disableNameSuffixHash", Node::Bool(true))]),
        ),
    ])
    .note(
        "secretGenerator",
        &[
            "The guard-auth Secret is made from the files in auth/, which `guard adduser --users",
            "auth/users.htpasswd`, `guard role set` and `guard token create --tokens auth/tokens.json` edit.",
        ],
    )
    .note(
        "generatorOptions",
        &[
            "A fixed name: `kubectl apply -k` then updates the Secret in place and the running",
            "pods re-read it, instead of a renamed Secret rolling every pod.",
        ],
    );
    document(
        &[
            "guard in front of MLflow on Kubernetes, written by `guard deploy kubernetes`.",
            "Apply it all with `kubectl apply -k .` in this directory (cert-manager must be installed).",
        ],
        &doc,
    )
}

fn namespace(d: &Deployment) -> String {
    let ns = &d.kubernetes.namespace;
    documents(
        &["The namespace every object of this deployment lives in."],
        &[object("v1", "Namespace", map(vec![("name", s(ns))]), vec![])],
    )
}

fn secret(name: &str, ns: &str, data: Vec<(&str, Node)>) -> Node {
    object(
        "v1",
        "Secret",
        metadata(name, ns, None),
        vec![("type", s("Opaque")), ("stringData", map(data))],
    )
}

/// The database DSN MLflow and the migration read.
fn database_uri(d: &Deployment, secrets: &Secrets) -> String {
    if d.kubernetes.with_postgres {
        format!(
            "{}://{PG_USER}:{}@{IN_NAMESPACE_DATABASE}/{PG_DATABASE}",
            mlflow::POSTGRES_SCHEME,
            secrets.postgres_password.expose()
        )
    } else {
        match &secrets.database_uri {
            Some(uri) => uri.expose().to_string(),
            None => {
                format!(
                    "{}://{PG_USER}:CHANGE-ME@{DATABASE_PLACEHOLDER_HOST}:{POSTGRES_PORT}/{PG_DATABASE}",
                    mlflow::POSTGRES_SCHEME
                )
            }
        }
    }
}

fn secrets_file(d: &Deployment, secrets: &Secrets) -> String {
    let ns = &d.kubernetes.namespace;
    let mut docs = vec![secret(
        MLFLOW,
        ns,
        vec![("flask-secret-key", s(secrets.flask_secret_key.expose()))],
    )
    .note(
        "stringData",
        &["MLflow's Flask secret key: every replica signs with the same one."],
    )];
    let mut db = vec![("uri", s(database_uri(d, secrets)))];
    if d.kubernetes.with_postgres {
        db.push(("postgres-password", s(secrets.postgres_password.expose())));
    }
    let db_note: &[&str] = if d.kubernetes.with_postgres {
        &[
            "The in-namespace PostgreSQL's password, and MLflow's DSN holding it. The database keeps",
            "the password it first started with: `guard deploy --force` keeps this value.",
        ]
    } else {
        &[
            "The DSN of MLflow's PostgreSQL database: replace the placeholder. `guard deploy --force`",
            "keeps what you write here. Percent-encode special characters of the password.",
        ]
    };
    docs.push(secret(MLFLOW_DATABASE, ns, db).note("stringData", db_note));
    if d.artifacts.is_s3() {
        docs.push(
            secret(
                MLFLOW_S3,
                ns,
                vec![
                    ("AWS_ACCESS_KEY_ID", s("")),
                    ("AWS_SECRET_ACCESS_KEY", s("")),
                    ("AWS_DEFAULT_REGION", s("us-east-1")),
                ],
            )
            .note(
                "stringData",
                &[
                    "Credentials for the artifact bucket; empty keys let boto3 use a pod identity.",
                    "For S3-compatible storage add MLFLOW_S3_ENDPOINT_URL.",
                ],
            ),
        );
    }
    if matches!(d.tls, Tls::Acme { .. }) && d.kubernetes.challenge == Challenge::Dns01 {
        docs.push(secret(ACME_DNS01, ns, vec![("api-token", s(""))]).note(
            "stringData",
            &["The DNS provider's API token cert-manager's DNS-01 solver uses."],
        ));
    }
    documents(
        &[
            "Secrets for `guard deploy kubernetes`, written with mode 0600: keep this file out of",
            "version control. guard's own Secret (guard-auth) is made from auth/ by kustomization.yaml.",
        ],
        &docs,
    )
}

/// The pod security context of guard, MLflow and the migration: the app user, never root, the
/// runtime's default seccomp profile, Secret files group-readable through fsGroup.
fn pod_security(uid: i64) -> Node {
    map(vec![
        ("runAsNonRoot", Node::Bool(true)),
        ("runAsUser", int(uid)),
        ("runAsGroup", int(uid)),
        ("fsGroup", int(uid)),
        ("seccompProfile", map(vec![("type", s("RuntimeDefault"))])),
    ])
}

/// The container security context every container gets.
fn container_security() -> Node {
    map(vec![
        ("allowPrivilegeEscalation", Node::Bool(false)),
        ("readOnlyRootFilesystem", Node::Bool(true)),
        ("capabilities", map(vec![("drop", strs(&["ALL"]))])),
    ])
}

fn resources(cpu: &str, memory: &str, memory_limit: &str) -> Node {
    map(vec![
        ("requests", map(vec![("cpu", s(cpu)), ("memory", s(memory))])),
        ("limits", map(vec![("memory", s(memory_limit))])),
    ])
}

fn secret_env(name: &str, secret: &str, key: &str) -> Node {
    map(vec![
        ("name", s(name)),
        (
            "valueFrom",
            map(vec![("secretKeyRef", map(vec![("name", s(secret)), ("key", s(key))]))]),
        ),
    ])
}

fn env(name: &str, value: &str) -> Node {
    map(vec![("name", s(name)), ("value", s(value))])
}

fn port(name: &str, number: u16) -> Node {
    map(vec![
        ("name", s(name)),
        ("containerPort", int(number)),
        ("protocol", s("TCP")),
    ])
}

fn http_probe(path: &str, port: &str, scheme: &str, period: i64, failures: i64) -> Node {
    map(vec![
        (
            "httpGet",
            map(vec![("path", s(path)), ("port", s(port)), ("scheme", s(scheme))]),
        ),
        ("periodSeconds", int(period)),
        ("timeoutSeconds", int(5)),
        ("failureThreshold", int(failures)),
    ])
}

fn mount(name: &str, path: &str) -> Node {
    map(vec![
        ("name", s(name)),
        ("mountPath", s(path)),
        ("readOnly", Node::Bool(true)),
    ])
}

fn writable_mount(name: &str, path: &str) -> Node {
    map(vec![("name", s(name)), ("mountPath", s(path))])
}

fn secret_volume(name: &str, secret: &str) -> Node {
    map(vec![
        ("name", s(name)),
        (
            "secret",
            map(vec![("secretName", s(secret)), ("defaultMode", int(SECRET_MODE))]),
        ),
    ])
}

fn empty_dir(name: &str) -> Node {
    map(vec![("name", s(name)), ("emptyDir", map::<&str>(vec![]))])
}

/// A pod template's spec with the settings every pod here shares.
fn pod_spec(uid: i64, containers: Vec<Node>, volumes: Vec<Node>) -> Node {
    map(vec![
        ("automountServiceAccountToken", Node::Bool(false)),
        ("enableServiceLinks", Node::Bool(false)),
        ("securityContext", pod_security(uid)),
        ("containers", Node::List(containers)),
        ("volumes", Node::List(volumes)),
    ])
    .note(
        "automountServiceAccountToken",
        &["No pod here talks to the Kubernetes API."],
    )
    .note(
        "enableServiceLinks",
        &[
            "No MLFLOW_PORT=tcp://... (read by `mlflow server` as its --port) or GUARD_* variables",
            "from the Services' links: settings come only from this file.",
        ],
    )
}

fn guard_settings() -> String {
    format!(
        "# guard's settings in the cluster, written by `guard deploy kubernetes`.\n\
         # The certificate is cert-manager's (Secret {GUARD_TLS}); users, tokens and the session key\n\
         # file are the {GUARD_AUTH} Secret, mounted as the state directory. guard re-reads all of\n\
         # them when they change; a change to this file takes `kubectl rollout restart deployment/guard`.\n\
         listen: \"0.0.0.0:{GUARD_PORT}\"\n\
         state_dir: \"{STATE_DIR}\"\n\
         upstream: \"{MLFLOW}:{MLFLOW_PORT}\"\n\
         shutdown_grace: \"30s\"\n\
         tls:\n\
         \x20 cert: \"{TLS_DIR}/tls.crt\"\n\
         \x20 key: \"{TLS_DIR}/tls.key\"\n"
    )
}

fn guard_file(d: &Deployment) -> String {
    let k = &d.kubernetes;
    let ns = &k.namespace;
    let selector = labels(GUARD, "proxy");
    let config_map = object(
        "v1",
        "ConfigMap",
        metadata(GUARD_CONFIG, ns, None),
        vec![("data", map(vec![("guard.yaml", s(guard_settings()))]))],
    );

    let container = map(vec![
        ("name", s(GUARD)),
        ("image", s(&k.image)),
        ("imagePullPolicy", s("IfNotPresent")),
        (
            "args",
            strs(&["serve", "--config", &format!("{CONFIG_DIR}/guard.yaml")]),
        ),
        ("ports", Node::List(vec![port("https", GUARD_PORT)])),
        (
            "readinessProbe",
            http_probe(guard_config::serve::HEALTH_PATH, "https", "HTTPS", 5, 2),
        ),
        (
            "livenessProbe",
            http_probe(guard_config::serve::HEALTH_PATH, "https", "HTTPS", 10, 6),
        ),
        (
            "lifecycle",
            map(vec![(
                "preStop",
                map(vec![("exec", map(vec![("command", strs(&["/bin/sleep", "5"]))]))]),
            )]),
        ),
        ("resources", resources("100m", "64Mi", "512Mi")),
        ("securityContext", container_security()),
        (
            "volumeMounts",
            Node::List(vec![
                mount("config", CONFIG_DIR),
                mount("auth", STATE_DIR),
                mount("tls", TLS_DIR),
                writable_mount("tmp", "/tmp"),
            ]),
        ),
    ])
    .note(
        "livenessProbe",
        &["Lenient: a busy guard is slow, not dead; restarting it would cut uploads."],
    )
    .note(
        "lifecycle",
        &[
            "The load balancer keeps sending for a few seconds after the pod is told to stop:",
            "keep accepting that long, then guard drains (SIGTERM) within its 30 s grace.",
        ],
    )
    .note(
        "resources",
        &[
            "No CPU limit: throttling would add latency to every request; memory is bounded",
            "(bodies stream).",
        ],
    );
    let mut spec = pod_spec(
        APP_UID,
        vec![container],
        vec![
            map(vec![
                ("name", s("config")),
                ("configMap", map(vec![("name", s(GUARD_CONFIG))])),
            ]),
            secret_volume("auth", GUARD_AUTH),
            secret_volume("tls", GUARD_TLS),
            empty_dir("tmp"),
        ],
    );
    spec.push("terminationGracePeriodSeconds", int(5 + i64::from(STOP_TIMEOUT_SECS)));
    spec.push(
        "topologySpreadConstraints",
        Node::List(vec![map(vec![
            ("maxSkew", int(1)),
            ("topologyKey", s("kubernetes.io/hostname")),
            ("whenUnsatisfiable", s("ScheduleAnyway")),
            ("labelSelector", map(vec![("matchLabels", selector.clone())])),
        ])]),
    );
    let deployment = object(
        "apps/v1",
        "Deployment",
        metadata(GUARD, ns, Some(labels_with_part_of(GUARD, "proxy"))),
        vec![(
            "spec",
            map(vec![
                ("replicas", int(k.replicas)),
                ("selector", map(vec![("matchLabels", selector.clone())])),
                (
                    "strategy",
                    map(vec![
                        ("type", s("RollingUpdate")),
                        (
                            "rollingUpdate",
                            map(vec![("maxUnavailable", int(0)), ("maxSurge", int(1))]),
                        ),
                    ]),
                ),
                (
                    "template",
                    map(vec![
                        ("metadata", map(vec![("labels", labels_with_part_of(GUARD, "proxy"))])),
                        ("spec", spec),
                    ]),
                ),
            ]),
        )],
    );
    let pdb = object(
        "policy/v1",
        "PodDisruptionBudget",
        metadata(GUARD, ns, None),
        vec![(
            "spec",
            map(vec![
                ("maxUnavailable", int(1)),
                ("selector", map(vec![("matchLabels", selector.clone())])),
            ]),
        )],
    );
    let service = object(
        "v1",
        "Service",
        metadata(GUARD, ns, Some(labels_with_part_of(GUARD, "proxy"))),
        vec![(
            "spec",
            map(vec![
                ("type", s("LoadBalancer")),
                ("externalTrafficPolicy", s("Local")),
                ("selector", selector),
                (
                    "ports",
                    Node::List(vec![map(vec![
                        ("name", s("https")),
                        ("port", int(443)),
                        ("targetPort", s("https")),
                        ("protocol", s("TCP")),
                    ])]),
                ),
            ])
            .note(
                "externalTrafficPolicy",
                &[
                    "Local keeps the client's address: guard's lockout counts failures per client,",
                    "and behind a node's address every client would share one count.",
                ],
            ),
        )],
    );
    documents(
        &[
            "guard: TLS and authentication in front of MLflow, written by `guard deploy kubernetes`.",
            "Its image is built from the Dockerfile beside this file; only its Service is public.",
        ],
        &[config_map, deployment, pdb, service],
    )
}

/// MLflow's environment: the DSN and Flask key from Secrets, a writable HOME.
fn mlflow_env() -> Vec<Node> {
    vec![
        secret_env("MLFLOW_BACKEND_STORE_URI", MLFLOW_DATABASE, "uri"),
        secret_env("MLFLOW_FLASK_SERVER_SECRET_KEY", MLFLOW, "flask-secret-key"),
        env("HOME", "/tmp"),
    ]
}

fn mlflow_container(d: &Deployment, name: &str, args: Vec<String>) -> Node {
    let mut c = map(vec![
        ("name", s(name)),
        ("image", s(&d.kubernetes.mlflow_image)),
        ("imagePullPolicy", s("IfNotPresent")),
        ("command", strs(&["mlflow"])),
        ("args", strs(&args)),
        ("env", Node::List(mlflow_env())),
    ]);
    if d.artifacts.is_s3() {
        c.push(
            "envFrom",
            Node::List(vec![map(vec![("secretRef", map(vec![("name", s(MLFLOW_S3))]))])]),
        );
    }
    c
}

fn mlflow_file(d: &Deployment) -> String {
    let k = &d.kubernetes;
    let ns = &k.namespace;
    let selector = labels(MLFLOW, "server");
    // guard sends Host: mlflow:5000; the public names are listed too, for preserve_host. Without
    // a domain the UI is reached through `kubectl port-forward` on localhost:8443.
    let public_port = match d.tls {
        Tls::Acme { .. } => 443,
        Tls::SelfSigned => 8443,
    };
    let destination = match &d.artifacts {
        Artifacts::S3 { .. } => d.artifacts.s3_uri().unwrap_or_default(),
        Artifacts::Managed | Artifacts::Local(_) => MLFLOW_ARTIFACTS.into(),
    };
    let args: Vec<String> = [
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        &MLFLOW_PORT.to_string(),
        "--backend-store-uri",
        "$(MLFLOW_BACKEND_STORE_URI)",
        "--serve-artifacts",
        "--artifacts-destination",
        &destination,
        "--allowed-hosts",
        &mlflow::allowed_hosts(&d.tls, public_port, &format!("{MLFLOW}:{MLFLOW_PORT}")),
        "--cors-allowed-origins",
        &mlflow::cors_origins(&d.tls, public_port),
    ]
    .map(String::from)
    .to_vec();
    let mut server = mlflow_container(d, MLFLOW, args);
    server.push("ports", Node::List(vec![port("http", MLFLOW_PORT)]));
    server.push_noted(
        "readinessProbe",
        http_probe("/health", "http", "HTTP", 10, 3),
        &["/health skips MLflow's Host check, so the kubelet's probe passes."],
    );
    server.push("livenessProbe", http_probe("/health", "http", "HTTP", 20, 6));
    server.push("resources", resources("250m", "512Mi", "2Gi"));
    server.push("securityContext", container_security());
    let mut mounts = vec![writable_mount("tmp", "/tmp")];
    let mut volumes = vec![empty_dir("tmp")];
    if matches!(d.artifacts, Artifacts::Managed) {
        mounts.push(writable_mount("artifacts", MLFLOW_ARTIFACTS));
        volumes.push(map(vec![
            ("name", s("artifacts")),
            ("persistentVolumeClaim", map(vec![("claimName", s("mlflow-artifacts"))])),
        ]));
    }
    server.push("volumeMounts", Node::List(mounts));
    let mut spec = pod_spec(APP_UID, vec![server], volumes);
    spec.push("terminationGracePeriodSeconds", int(i64::from(STOP_TIMEOUT_SECS)));

    let mut docs = Vec::new();
    if matches!(d.artifacts, Artifacts::Managed) {
        docs.push(
            object(
                "v1",
                "PersistentVolumeClaim",
                metadata("mlflow-artifacts", ns, None),
                vec![(
                    "spec",
                    map(vec![
                        ("accessModes", strs(&["ReadWriteMany"])),
                        ("resources", map(vec![("requests", map(vec![("storage", s("50Gi"))]))])),
                    ]),
                )],
            )
            .note(
                "spec",
                &[
                    "Every MLflow replica writes artifacts here, so the cluster needs a storage class",
                    "with ReadWriteMany (NFS, CephFS, EFS, Filestore); or use --artifacts s3://...",
                ],
            ),
        );
    }
    docs.push(object(
        "apps/v1",
        "Deployment",
        metadata(MLFLOW, ns, Some(labels_with_part_of(MLFLOW, "server"))),
        vec![(
            "spec",
            map(vec![
                ("replicas", int(k.mlflow_replicas)),
                ("selector", map(vec![("matchLabels", selector.clone())])),
                (
                    "template",
                    map(vec![
                        ("metadata", map(vec![("labels", labels_with_part_of(MLFLOW, "server"))])),
                        ("spec", spec),
                    ]),
                ),
            ]),
        )],
    ));
    docs.push(object(
        "v1",
        "Service",
        metadata(MLFLOW, ns, Some(labels_with_part_of(MLFLOW, "server"))),
        vec![(
            "spec",
            map(vec![
                ("type", s("ClusterIP")),
                ("selector", selector.clone()),
                (
                    "ports",
                    Node::List(vec![map(vec![
                        ("name", s("http")),
                        ("port", int(MLFLOW_PORT)),
                        ("targetPort", s("http")),
                        ("protocol", s("TCP")),
                    ])]),
                ),
            ]),
        )],
    ));
    docs.push(
        object(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            metadata(MLFLOW, ns, None),
            vec![(
                "spec",
                map(vec![
                    ("podSelector", map(vec![("matchLabels", selector)])),
                    ("policyTypes", strs(&["Ingress"])),
                    (
                        "ingress",
                        Node::List(vec![map(vec![
                            (
                                "from",
                                Node::List(vec![map(vec![(
                                    "podSelector",
                                    map(vec![("matchLabels", labels(GUARD, "proxy"))]),
                                )])]),
                            ),
                            (
                                "ports",
                                Node::List(vec![map(vec![("protocol", s("TCP")), ("port", int(MLFLOW_PORT))])]),
                            ),
                        ])]),
                    ),
                ]),
            )],
        )
        .note(
            "spec",
            &[
                "Only guard's pods reach MLflow: nothing goes around the authentication. (It takes",
                "a network plugin that enforces NetworkPolicy, as most do.)",
            ],
        ),
    );

    let migrate_selector = labels(MLFLOW, "migrate");
    let mut migrate = mlflow_container(
        d,
        "migrate",
        ["db", "upgrade", "$(MLFLOW_BACKEND_STORE_URI)"]
            .map(String::from)
            .to_vec(),
    );
    migrate.push("resources", resources("100m", "256Mi", "1Gi"));
    migrate.push("securityContext", container_security());
    migrate.push("volumeMounts", Node::List(vec![writable_mount("tmp", "/tmp")]));
    let mut job_spec = pod_spec(APP_UID, vec![migrate], vec![empty_dir("tmp")]);
    job_spec.push("restartPolicy", s("OnFailure"));
    docs.push(
        object(
            "batch/v1",
            "Job",
            metadata(MLFLOW_MIGRATE, ns, Some(labels_with_part_of(MLFLOW, "migrate"))),
            vec![(
                "spec",
                map(vec![
                    ("backoffLimit", int(6)),
                    ("ttlSecondsAfterFinished", int(3600)),
                    (
                        "template",
                        map(vec![
                            ("metadata", map(vec![("labels", migrate_selector)])),
                            ("spec", job_spec),
                        ]),
                    ),
                ])
                .note(
                    "ttlSecondsAfterFinished",
                    &[
                        "Removed an hour after it finishes, so the next `kubectl apply -k` (a new MLflow",
                        "version: a new image) creates it again rather than failing on an immutable Job.",
                    ],
                ),
            )],
        )
        .note(
            "spec",
            &[
                "Creates the schema in an empty database or migrates an old one; MLflow's pods fail",
                "their start until it has, and come back by themselves.",
            ],
        ),
    );
    documents(
        &[
            "MLflow behind guard, written by `guard deploy kubernetes`. Reachable from guard's pods",
            "only; its image is built from mlflow/Dockerfile.",
        ],
        &docs,
    )
}

fn postgres(d: &Deployment) -> String {
    let ns = &d.kubernetes.namespace;
    let selector = labels(POSTGRES, "database");
    let container = map(vec![
        ("name", s(POSTGRES)),
        ("image", s(POSTGRES_IMAGE)),
        ("imagePullPolicy", s("IfNotPresent")),
        (
            "env",
            Node::List(vec![
                env("POSTGRES_USER", PG_USER),
                env("POSTGRES_DB", PG_DATABASE),
                secret_env("POSTGRES_PASSWORD", MLFLOW_DATABASE, "postgres-password"),
                env("PGDATA", "/var/lib/postgresql/data/pgdata"),
            ]),
        ),
        ("ports", Node::List(vec![port("postgres", POSTGRES_PORT)])),
        (
            "readinessProbe",
            map(vec![
                (
                    "exec",
                    map(vec![(
                        "command",
                        strs(&[
                            "pg_isready",
                            "--host",
                            "127.0.0.1",
                            "--username",
                            PG_USER,
                            "--dbname",
                            PG_DATABASE,
                        ]),
                    )]),
                ),
                ("periodSeconds", int(5)),
                ("timeoutSeconds", int(5)),
            ]),
        ),
        ("resources", resources("100m", "256Mi", "1Gi")),
        ("securityContext", container_security()),
        (
            "volumeMounts",
            Node::List(vec![
                writable_mount("data", "/var/lib/postgresql/data"),
                writable_mount("run", "/var/run/postgresql"),
                writable_mount("tmp", "/tmp"),
            ]),
        ),
    ])
    .note(
        "env",
        &["PGDATA one level down: a fresh volume's root holds lost+found, which initdb refuses."],
    );
    let statefulset = object(
        "apps/v1",
        "StatefulSet",
        metadata(POSTGRES, ns, Some(labels_with_part_of(POSTGRES, "database"))),
        vec![(
            "spec",
            map(vec![
                ("serviceName", s(POSTGRES)),
                ("replicas", int(1)),
                ("selector", map(vec![("matchLabels", selector.clone())])),
                (
                    "template",
                    map(vec![
                        (
                            "metadata",
                            map(vec![("labels", labels_with_part_of(POSTGRES, "database"))]),
                        ),
                        (
                            "spec",
                            pod_spec(POSTGRES_UID, vec![container], vec![empty_dir("run"), empty_dir("tmp")]),
                        ),
                    ]),
                ),
                (
                    "volumeClaimTemplates",
                    Node::List(vec![map(vec![
                        ("metadata", map(vec![("name", s("data"))])),
                        (
                            "spec",
                            map(vec![
                                ("accessModes", strs(&["ReadWriteOnce"])),
                                ("resources", map(vec![("requests", map(vec![("storage", s("10Gi"))]))])),
                            ]),
                        ),
                    ])]),
                ),
            ]),
        )],
    );
    let service = object(
        "v1",
        "Service",
        metadata(POSTGRES, ns, Some(labels_with_part_of(POSTGRES, "database"))),
        vec![(
            "spec",
            map(vec![
                ("clusterIP", s("None")),
                ("selector", selector.clone()),
                (
                    "ports",
                    Node::List(vec![map(vec![
                        ("name", s("postgres")),
                        ("port", int(POSTGRES_PORT)),
                        ("targetPort", s("postgres")),
                        ("protocol", s("TCP")),
                    ])]),
                ),
            ]),
        )],
    );
    let policy = object(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        metadata(POSTGRES, ns, None),
        vec![(
            "spec",
            map(vec![
                ("podSelector", map(vec![("matchLabels", selector)])),
                ("policyTypes", strs(&["Ingress"])),
                (
                    "ingress",
                    Node::List(vec![map(vec![
                        (
                            "from",
                            Node::List(vec![map(vec![(
                                "podSelector",
                                map(vec![("matchLabels", map(vec![("app.kubernetes.io/name", s(MLFLOW))]))]),
                            )])]),
                        ),
                        (
                            "ports",
                            Node::List(vec![map(vec![("protocol", s("TCP")), ("port", int(POSTGRES_PORT))])]),
                        ),
                    ])]),
                ),
            ]),
        )],
    )
    .note(
        "spec",
        &["MLflow's server and migration pods, and nothing else, reach the database."],
    );
    documents(
        &[
            "PostgreSQL for trying guard and MLflow out (`--with-postgres`), written by",
            "`guard deploy kubernetes`: one pod, one volume, no backups. For production, run the",
            "database elsewhere and give its DSN in secrets.yaml instead.",
        ],
        &[statefulset, service, policy],
    )
}

fn certificate(d: &Deployment) -> String {
    let ns = &d.kubernetes.namespace;
    let (issuer_name, issuer_spec, dns_names, header): (&str, Node, Vec<String>, &[&str]) = match &d.tls {
        Tls::Acme { domains, email } => {
            let solver = match d.kubernetes.challenge {
                Challenge::Http01 => map(vec![("http01", map(vec![("ingress", map::<&str>(vec![]))]))]).note(
                    "http01",
                    &[
                        "An Ingress without a class: the cluster's ingress controller serves the challenge,",
                        "so port 80 of the domain must reach it (guard's Service serves 443 only).",
                    ],
                ),
                Challenge::Dns01 => map(vec![(
                    "dns01",
                    map(vec![(
                        "cloudflare",
                        map(vec![(
                            "apiTokenSecretRef",
                            map(vec![("name", s(ACME_DNS01)), ("key", s("api-token"))]),
                        )]),
                    )]),
                )])
                .note(
                    "dns01",
                    &[
                        "Written for Cloudflare: replace with your DNS provider's block",
                        "(https://cert-manager.io/docs/configuration/acme/dns01/).",
                    ],
                ),
            };
            (
                "guard-acme",
                map(vec![(
                    "acme",
                    map(vec![
                        ("email", s(email)),
                        ("server", s("https://acme-v02.api.letsencrypt.org/directory")),
                        ("privateKeySecretRef", map(vec![("name", s("guard-acme-account"))])),
                        ("solvers", Node::List(vec![solver])),
                    ])
                    .note(
                        "privateKeySecretRef",
                        &["cert-manager creates this Secret for the ACME account key."],
                    ),
                )]),
                domains.clone(),
                &[
                    "cert-manager obtains guard's certificate from Let's Encrypt, written by",
                    "`guard deploy kubernetes`, and renews it into the same Secret, which guard re-reads.",
                ],
            )
        }
        Tls::SelfSigned => (
            "guard-selfsigned",
            map(vec![("selfSigned", map::<&str>(vec![]))]),
            vec!["localhost".into(), format!("{GUARD}.{ns}.svc")],
            &[
                "A self-signed certificate for guard (no --domain), written by `guard deploy",
                "kubernetes`: for `kubectl port-forward` and in-cluster clients.",
            ],
        ),
    };
    let issuer = object(
        "cert-manager.io/v1",
        "Issuer",
        metadata(issuer_name, ns, None),
        vec![("spec", issuer_spec)],
    );
    let mut meta = metadata(GUARD_TLS, ns, None);
    meta.push_noted(
        "annotations",
        map(vec![("cert-manager.io/issue-temporary-certificate", s("true"))]),
        &["A placeholder certificate until the first is issued, so guard's pods can start."],
    );
    let cert = object(
        "cert-manager.io/v1",
        "Certificate",
        meta,
        vec![(
            "spec",
            map(vec![
                ("secretName", s(GUARD_TLS)),
                ("dnsNames", strs(&dns_names)),
                (
                    "issuerRef",
                    map(vec![
                        ("name", s(issuer_name)),
                        ("kind", s("Issuer")),
                        ("group", s("cert-manager.io")),
                    ]),
                ),
                (
                    "privateKey",
                    map(vec![
                        ("algorithm", s("ECDSA")),
                        ("size", int(256)),
                        ("encoding", s("PKCS8")),
                        ("rotationPolicy", s("Always")),
                    ]),
                ),
            ])
            .note(
                "secretName",
                &["guard's pods mount this Secret whole and serve tls.crt and tls.key from it."],
            ),
        )],
    );
    documents(header, &[issuer, cert])
}
