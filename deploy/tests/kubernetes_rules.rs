//! Rules for the rendered Kubernetes manifests that no schema checks (kubernetes-validate and
//! cert-manager's schema pass a selector that matches no pod, a Secret that does not exist, a
//! certificate guard never mounts). Each test walks every kubernetes case, parsing the YAML
//! as `kubectl apply -k` would get it: the resource files plus the Secret kustomize generates.

mod common;

use std::collections::BTreeMap;

use common::{cases_for, fixed_secret_values, render_case};
use guard_deploy::{RenderedFile, Target};
use serde::Deserialize as _;
use serde_yaml::Value;

/// One case's objects, and its files by path.
struct Rendered {
    name: String,
    objects: Vec<Value>,
    files: BTreeMap<String, String>,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.name))
    }

    /// Every workload with a pod template: (kind/name, template).
    fn pod_templates(&self) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for kind in ["Deployment", "StatefulSet", "Job"] {
            for o in self.of_kind(kind) {
                out.push((
                    format!("{kind}/{}", str_at(&o["metadata"]["name"])),
                    &o["spec"]["template"],
                ));
            }
        }
        out
    }

    /// Secret name → its keys: the resource files' Secrets, the one kustomize generates from
    /// auth/, and the one cert-manager writes for the Certificate (tls.crt and tls.key).
    fn secrets(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in self.of_kind("Secret") {
            let keys = s["stringData"].as_mapping().expect("stringData");
            out.insert(
                str_at(&s["metadata"]["name"]).to_string(),
                keys.keys().map(|k| str_at(k).to_string()).collect(),
            );
        }
        let kustomization: Value = serde_yaml::from_str(&self.files["kustomization.yaml"]).unwrap();
        for g in seq(&kustomization["secretGenerator"]) {
            let keys = seq(&g["files"])
                .iter()
                .map(|f| {
                    let path = str_at(f);
                    assert!(
                        self.files.contains_key(path),
                        "{}: generator file {path} not written",
                        self.name
                    );
                    path.rsplit('/').next().unwrap().to_string()
                })
                .collect();
            out.insert(str_at(&g["name"]).to_string(), keys);
        }
        for c in self.of_kind("Certificate") {
            out.insert(
                str_at(&c["spec"]["secretName"]).to_string(),
                vec!["tls.crt".into(), "tls.key".into()],
            );
        }
        out
    }
}

fn str_at(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn seq(v: &Value) -> &Vec<Value> {
    v.as_sequence().unwrap_or_else(|| panic!("not a list: {v:?}"))
}

fn rendered() -> Vec<Rendered> {
    let cases = cases_for(Target::Kubernetes);
    assert!(cases.len() >= 3, "kubernetes cases");
    cases
        .iter()
        .map(|case| {
            let files: Vec<RenderedFile> = render_case(case);
            let mut objects = Vec::new();
            for f in &files {
                let path = f.path.to_str().unwrap();
                if path.ends_with(".yaml") && path != "kustomization.yaml" {
                    for doc in serde_yaml::Deserializer::from_str(&f.contents) {
                        let v =
                            Value::deserialize(doc).unwrap_or_else(|e| panic!("{}/{path}: not YAML: {e}", case.name));
                        if !v.is_null() {
                            objects.push(v);
                        }
                    }
                }
            }
            Rendered {
                name: case.name.to_string(),
                objects,
                files: files
                    .iter()
                    .map(|f| (f.path.display().to_string(), f.contents.clone()))
                    .collect(),
            }
        })
        .collect()
}

/// Whether every `(key, value)` of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(sel) = selector.as_mapping() else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The words YAML 1.1 reads as booleans or null when bare.
const YAML11_WORDS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"];

/// The lines of a YAML text that hold an unquoted string scalar or a key that is not a plain
/// identifier: everything but `"..."`, integers, `true`/`false`, `{}`, `[]` and `|` blocks.
fn unquoted_scalars(text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    // Inside a `|` block, lines are the string itself: skip them.
    let mut block_indent: Option<usize> = None;
    for (n, raw) in text.lines().enumerate() {
        let indent = raw.len() - raw.trim_start().len();
        if let Some(b) = block_indent {
            if raw.trim().is_empty() || indent > b {
                continue;
            }
            block_indent = None;
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line == "---" {
            continue;
        }
        let item = line.strip_prefix("- ").unwrap_or(line);
        let (key, value) = match item.find(": ") {
            _ if item.starts_with('"') => (None, item),
            Some(i) => (Some(&item[..i]), &item[i + 2..]),
            None if item.ends_with(':') => (Some(&item[..item.len() - 1]), ""),
            None => (None, item),
        };
        if let Some(k) = key {
            let plain = k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'));
            if !plain || YAML11_WORDS.contains(&k.to_ascii_lowercase().as_str()) {
                bad.push(format!("{}: key {k:?}", n + 1));
            }
        }
        if value == "|" {
            block_indent = Some(indent);
            continue;
        }
        let ok = value.is_empty()
            || (value.len() >= 2 && value.starts_with('"') && value.ends_with('"'))
            || matches!(value, "{}" | "[]" | "true" | "false")
            || value.parse::<i64>().is_ok();
        if !ok {
            bad.push(format!("{}: {raw:?}", n + 1));
        }
    }
    bad
}

#[test]
fn the_quoting_check_finds_bare_strings() {
    let text = "a: \"x\"\nb: on\nc: 3\n- no\nd: |\n  free: text\ne: 0440x\n\"f\"\nyes: \"k\"\n";
    assert_eq!(
        unquoted_scalars(text),
        ["2: \"b: on\"", "4: \"- no\"", "7: \"e: 0440x\"", "9: key \"yes\""]
    );
}

#[test]
fn every_string_scalar_in_the_files_is_quoted() {
    for case in cases_for(Target::Kubernetes) {
        for f in render_case(&case) {
            let path = f.path.display().to_string();
            if path.ends_with(".yaml") {
                let bad = unquoted_scalars(&f.contents);
                assert!(bad.is_empty(), "{}/{path}: unquoted: {bad:?}", case.name);
            }
        }
    }
}

#[test]
fn every_selector_matches_its_pods_and_only_them() {
    for r in rendered() {
        let templates = r.pod_templates();
        for kind in ["Deployment", "StatefulSet"] {
            for o in r.of_kind(kind) {
                let labels = &o["spec"]["template"]["metadata"]["labels"];
                assert!(
                    selects(&o["spec"]["selector"]["matchLabels"], labels),
                    "{}: {kind} {:?}: selector does not match its template labels",
                    r.name,
                    o["metadata"]["name"]
                );
            }
        }
        for (kind, sel_path) in [("Service", "selector"), ("PodDisruptionBudget", "selector")] {
            for o in r.of_kind(kind) {
                let sel = if kind == "Service" {
                    &o["spec"][sel_path]
                } else {
                    &o["spec"][sel_path]["matchLabels"]
                };
                let matched: Vec<&String> = templates
                    .iter()
                    .filter(|(_, t)| selects(sel, &t["metadata"]["labels"]))
                    .map(|(n, _)| n)
                    .collect();
                let own = format!("/{}", str_at(&o["metadata"]["name"]));
                assert_eq!(matched.len(), 1, "{}: {kind}{own} selects {matched:?}", r.name);
                assert!(
                    matched[0].ends_with(&own),
                    "{}: {kind}{own} selects {matched:?}, not its own workload",
                    r.name
                );
            }
        }
    }
}

/// The container ports of the pods `selector` picks: name → number.
fn ports_of(r: &Rendered, selector: &Value) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (_, t) in r.pod_templates() {
        if selects(selector, &t["metadata"]["labels"]) {
            for c in seq(&t["spec"]["containers"]) {
                for p in c["ports"].as_sequence().into_iter().flatten() {
                    out.insert(str_at(&p["name"]).to_string(), p["containerPort"].as_i64().unwrap());
                }
            }
        }
    }
    out
}

#[test]
fn service_and_probe_ports_name_container_ports() {
    for r in rendered() {
        for svc in r.of_kind("Service") {
            let ports = ports_of(&r, &svc["spec"]["selector"]);
            for p in seq(&svc["spec"]["ports"]) {
                let target = str_at(&p["targetPort"]);
                assert!(
                    ports.contains_key(target),
                    "{}: Service {:?} targets {target}, which its pods lack ({ports:?})",
                    r.name,
                    svc["metadata"]["name"]
                );
                assert!(p["port"].as_i64().is_some_and(|n| (1..=65535).contains(&n)));
            }
        }
        for (name, t) in r.pod_templates() {
            for c in seq(&t["spec"]["containers"]) {
                let own: Vec<&str> = c["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|p| str_at(&p["name"]))
                    .collect();
                for own_name in &own {
                    assert!(own_name.len() <= 15, "{}: {name}: port name {own_name} over 15", r.name);
                }
                for probe in ["readinessProbe", "livenessProbe"] {
                    if let Some(port) = c[probe]["httpGet"]["port"].as_str() {
                        assert!(own.contains(&port), "{}: {name} {probe} on {port}, not {own:?}", r.name);
                    }
                }
            }
        }
    }
}

#[test]
fn only_guard_reaches_mlflow_and_only_mlflow_reaches_postgres() {
    for r in rendered() {
        let pods = r.pod_templates();
        let who = |sel: &Value| -> Vec<String> {
            pods.iter()
                .filter(|(_, t)| selects(sel, &t["metadata"]["labels"]))
                .map(|(n, _)| n.clone())
                .collect()
        };
        let policy = r.named("NetworkPolicy", "mlflow");
        assert_eq!(
            policy["spec"]["policyTypes"],
            serde_yaml::from_str::<Value>("[Ingress]").unwrap()
        );
        assert_eq!(
            who(&policy["spec"]["podSelector"]["matchLabels"]),
            ["Deployment/mlflow"],
            "{}",
            r.name
        );
        let rules = seq(&policy["spec"]["ingress"]);
        assert_eq!(rules.len(), 1, "{}", r.name);
        let from = seq(&rules[0]["from"]);
        assert_eq!(from.len(), 1, "{}: one peer only", r.name);
        assert!(from[0].get("namespaceSelector").is_none() && from[0].get("ipBlock").is_none());
        assert_eq!(
            who(&from[0]["podSelector"]["matchLabels"]),
            ["Deployment/guard"],
            "{}",
            r.name
        );
        let mlflow_ports = ports_of(&r, &policy["spec"]["podSelector"]["matchLabels"]);
        let allowed: Vec<i64> = seq(&rules[0]["ports"])
            .iter()
            .map(|p| p["port"].as_i64().unwrap())
            .collect();
        assert_eq!(allowed, [mlflow_ports["http"]], "{}", r.name);

        // guard's upstream is MLflow's Service on that port.
        let config = str_at(&r.named("ConfigMap", "guard-config")["data"]["guard.yaml"]);
        let svc = r.named("Service", "mlflow");
        let port = seq(&svc["spec"]["ports"])[0]["port"].as_i64().unwrap();
        assert!(
            config.contains(&format!("upstream: \"mlflow:{port}\"")),
            "{}: {config}",
            r.name
        );

        if let Some(pg) = r
            .of_kind("NetworkPolicy")
            .into_iter()
            .find(|p| p["metadata"]["name"] == "postgres")
        {
            assert_eq!(who(&pg["spec"]["podSelector"]["matchLabels"]), ["StatefulSet/postgres"]);
            let from = seq(&seq(&pg["spec"]["ingress"])[0]["from"]);
            let mut clients = who(&from[0]["podSelector"]["matchLabels"]);
            clients.sort();
            assert_eq!(clients, ["Deployment/mlflow", "Job/mlflow-migrate"], "{}", r.name);
        }
    }
}

#[test]
fn every_referenced_secret_config_map_and_key_exists() {
    for r in rendered() {
        let secrets = r.secrets();
        let config_maps: BTreeMap<String, Vec<String>> = r
            .of_kind("ConfigMap")
            .iter()
            .map(|c| {
                let keys = c["data"]
                    .as_mapping()
                    .unwrap()
                    .keys()
                    .map(|k| str_at(k).to_string())
                    .collect();
                (str_at(&c["metadata"]["name"]).to_string(), keys)
            })
            .collect();
        let has_secret_key = |name: &str, key: &str, at: &str| {
            let keys = secrets
                .get(name)
                .unwrap_or_else(|| panic!("{}: {at}: no Secret {name}", r.name));
            assert!(
                keys.iter().any(|k| k == key),
                "{}: {at}: Secret {name} has no key {key}",
                r.name
            );
        };
        for (name, t) in r.pod_templates() {
            let spec = &t["spec"];
            for v in seq(&spec["volumes"]) {
                if let Some(s) = v["secret"]["secretName"].as_str() {
                    assert!(
                        secrets.contains_key(s),
                        "{}: {name}: volume of missing Secret {s}",
                        r.name
                    );
                }
                if let Some(c) = v["configMap"]["name"].as_str() {
                    assert!(config_maps.contains_key(c), "{}: {name}: missing ConfigMap {c}", r.name);
                }
            }
            for c in seq(&spec["containers"]) {
                for e in c["env"].as_sequence().into_iter().flatten() {
                    let r#ref = &e["valueFrom"]["secretKeyRef"];
                    if let Some(s) = r#ref["name"].as_str() {
                        has_secret_key(s, str_at(&r#ref["key"]), &name);
                    }
                }
                for e in c["envFrom"].as_sequence().into_iter().flatten() {
                    let s = str_at(&e["secretRef"]["name"]);
                    assert!(
                        secrets.contains_key(s),
                        "{}: {name}: envFrom missing Secret {s}",
                        r.name
                    );
                }
                // Every mount names a volume of the pod (or a StatefulSet's claim template).
                for m in seq(&c["volumeMounts"]) {
                    let v = str_at(&m["name"]);
                    let claims = r
                        .of_kind("StatefulSet")
                        .into_iter()
                        .flat_map(|s| s["spec"]["volumeClaimTemplates"].as_sequence().into_iter().flatten())
                        .any(|c| c["metadata"]["name"].as_str() == Some(v));
                    assert!(
                        claims || seq(&spec["volumes"]).iter().any(|x| x["name"].as_str() == Some(v)),
                        "{}: {name}: mount of unknown volume {v}",
                        r.name
                    );
                }
            }
        }
        for issuer in r.of_kind("Issuer") {
            for solver in issuer["spec"]["acme"]["solvers"].as_sequence().into_iter().flatten() {
                let token = &solver["dns01"]["cloudflare"]["apiTokenSecretRef"];
                if let Some(s) = token["name"].as_str() {
                    has_secret_key(s, str_at(&token["key"]), "Issuer dns01");
                }
            }
        }
        // The Secrets of secrets.yaml live in the namespace the workloads use.
        for o in &r.objects {
            if o["kind"] != "Namespace" {
                assert_eq!(
                    o["metadata"]["namespace"],
                    r.of_kind("Namespace")[0]["metadata"]["name"],
                    "{}: {:?} outside the namespace",
                    r.name,
                    o["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn guard_serves_the_certificate_cert_manager_writes_from_a_whole_secret_mount() {
    for r in rendered() {
        let cert = &r.of_kind("Certificate")[0];
        let secret_name = str_at(&cert["spec"]["secretName"]);
        let dns = seq(&cert["spec"]["dnsNames"]);
        assert!(!dns.is_empty(), "{}: a Certificate without names", r.name);
        let issuer = &cert["spec"]["issuerRef"];
        assert_eq!(issuer["kind"], "Issuer");
        r.named("Issuer", str_at(&issuer["name"]));

        let guard = r.named("Deployment", "guard");
        let spec = &guard["spec"]["template"]["spec"];
        let volume = seq(&spec["volumes"])
            .iter()
            .find(|v| v["secret"]["secretName"].as_str() == Some(secret_name))
            .unwrap_or_else(|| panic!("{}: guard does not mount Secret {secret_name}", r.name));
        let container = &seq(&spec["containers"])[0];
        let mount = seq(&container["volumeMounts"])
            .iter()
            .find(|m| m["name"] == volume["name"])
            .expect("the TLS volume is mounted");
        let dir = str_at(&mount["mountPath"]);
        let config = str_at(&r.named("ConfigMap", "guard-config")["data"]["guard.yaml"]);
        for file in ["tls.crt", "tls.key"] {
            assert!(
                config.contains(&format!("\"{dir}/{file}\"")),
                "{}: guard.yaml lacks {dir}/{file}",
                r.name
            );
        }
        assert!(!r.files.values().any(|t| t.contains("subPath")), "{}: subPath", r.name);
        for (name, t) in r.pod_templates() {
            for c in seq(&t["spec"]["containers"]) {
                for m in seq(&c["volumeMounts"]) {
                    assert!(
                        m.get("subPath").is_none() && m.get("subPathExpr").is_none(),
                        "{}: {name}",
                        r.name
                    );
                }
            }
        }
        // The users Secret is guard's state directory, where it reads the session key file.
        let auth = seq(&spec["volumes"])
            .iter()
            .find(|v| v["secret"]["secretName"] == "guard-auth")
            .expect("guard-auth volume");
        let auth_dir = seq(&container["volumeMounts"])
            .iter()
            .find(|m| m["name"] == auth["name"])
            .map(|m| str_at(&m["mountPath"]))
            .unwrap();
        assert!(
            config.contains(&format!("state_dir: \"{auth_dir}\"")),
            "{}: {config}",
            r.name
        );
    }
}

#[test]
fn pods_run_hardened_and_guard_keeps_two_replicas() {
    for r in rendered() {
        let guard = r.named("Deployment", "guard");
        assert!(guard["spec"]["replicas"].as_i64().unwrap() >= 2, "{}", r.name);
        assert_eq!(guard["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        let pdb = r.named("PodDisruptionBudget", "guard");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        let svc = r.named("Service", "guard");
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(r.named("Service", "mlflow")["spec"]["type"], "ClusterIP");
        for (name, t) in r.pod_templates() {
            let spec = &t["spec"];
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{}: {name}", r.name);
            assert!(spec["securityContext"]["runAsUser"].as_i64().unwrap() > 0);
            assert_eq!(spec["automountServiceAccountToken"], false, "{}: {name}", r.name);
            assert_eq!(spec["enableServiceLinks"], false, "{}: {name}", r.name);
            for c in seq(&spec["containers"]) {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{}: {name}", r.name);
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{}: {name}", r.name);
                assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{}: {name}", r.name);
                assert!(c["resources"]["requests"]["memory"].is_string(), "{}: {name}", r.name);
                assert!(c["resources"]["limits"]["memory"].is_string(), "{}: {name}", r.name);
                if !name.starts_with("Job/") {
                    assert!(c["readinessProbe"].is_mapping(), "{}: {name}", r.name);
                }
            }
            if name != "StatefulSet/postgres" {
                assert!(
                    c_has_liveness_or_job(&name, spec),
                    "{}: {name}: no liveness probe",
                    r.name
                );
            }
        }
        for o in &r.objects {
            let n = str_at(&o["metadata"]["name"]);
            let ok = n.len() <= 63
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !n.starts_with('-')
                && !n.ends_with('-');
            assert!(ok, "{}: {n} is not a DNS-1123 label", r.name);
        }
    }
}

fn c_has_liveness_or_job(name: &str, spec: &Value) -> bool {
    name.starts_with("Job/") || seq(&spec["containers"]).iter().all(|c| c["livenessProbe"].is_mapping())
}

#[test]
fn secret_values_stay_in_the_secret_files() {
    for case in cases_for(Target::Kubernetes) {
        for f in render_case(&case) {
            let path = f.path.display().to_string();
            if f.mode == 0o600 {
                continue;
            }
            for secret in fixed_secret_values() {
                assert!(!f.contents.contains(&secret), "{}/{path}: a secret value", case.name);
            }
        }
        let files = render_case(&case);
        for secret in [
            "secrets.yaml",
            "auth/session-keys.json",
            "auth/users.htpasswd",
            "auth/tokens.json",
        ] {
            let f = files.iter().find(|f| f.path.to_str() == Some(secret)).unwrap();
            assert_eq!(f.mode, 0o600, "{}: {secret}", case.name);
        }
    }
}

#[test]
fn kustomization_lists_every_manifest_once() {
    for r in rendered() {
        let k: Value = serde_yaml::from_str(&r.files["kustomization.yaml"]).unwrap();
        let mut listed: Vec<&str> = seq(&k["resources"]).iter().map(str_at).collect();
        let mut manifests: Vec<&str> = r
            .files
            .keys()
            .map(String::as_str)
            .filter(|p| p.ends_with(".yaml") && *p != "kustomization.yaml")
            .collect();
        assert_eq!(listed[0], "namespace.yaml", "{}: the namespace comes first", r.name);
        listed.sort();
        manifests.sort();
        assert_eq!(listed, manifests, "{}", r.name);
        assert_eq!(k["generatorOptions"]["disableNameSuffixHash"], true, "{}", r.name);
    }
}
