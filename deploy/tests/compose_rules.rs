//! Rules for the rendered compose files that no schema checks (docker-compose and the
//! compose-spec schema are structural: neither rejects `restart: sometimes`). Each test walks
//! every compose case, parsing the YAML the way compose does.

mod common;

use std::collections::BTreeSet;

use common::{cases_for, fixed_secrets, render_case};
use guard_deploy::{Target, Tls};
use serde_yaml::Value;

/// (case name, parsed docker-compose.yml, its text, the .env text) for every compose case.
fn compose_files() -> Vec<(String, Value, String, String, bool)> {
    cases_for(Target::Compose)
        .into_iter()
        .map(|case| {
            let files = render_case(&case);
            let get = |name: &str| {
                files
                    .iter()
                    .find(|f| f.path.to_str() == Some(name))
                    .unwrap_or_else(|| panic!("{}: no {name}", case.name))
            };
            let yml = get("docker-compose.yml").contents.clone();
            let env = get(".env").contents.clone();
            assert_eq!(get(".env").mode, 0o600, "{}: .env mode", case.name);
            let value: Value =
                serde_yaml::from_str(&yml).unwrap_or_else(|e| panic!("{}: not YAML: {e}\n{yml}", case.name));
            let domain = matches!(case.deployment.tls, Tls::Acme { .. });
            (case.name.to_string(), value, yml, env, domain)
        })
        .collect()
}

fn services(compose: &Value) -> Vec<(String, &Value)> {
    compose["services"]
        .as_mapping()
        .expect("services is a mapping")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v))
        .collect()
}

#[test]
fn no_service_but_guard_publishes_a_port() {
    for (name, compose, ..) in compose_files() {
        for (service, def) in services(&compose) {
            if service != "guard" {
                assert!(def.get("ports").is_none(), "{name}: {service} publishes ports");
                assert!(def.get("network_mode").is_none(), "{name}: {service} sets network_mode");
            }
        }
    }
}

#[test]
fn guard_publishes_443_and_80_with_a_domain_and_8443_without() {
    for (name, compose, _, _, domain) in compose_files() {
        let ports: Vec<&str> = compose["services"]["guard"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p.as_str().expect("ports are quoted strings"))
            .collect();
        let expected: &[&str] = if domain {
            &["80:8080", "443:8443"]
        } else {
            &["8443:8443"]
        };
        assert_eq!(ports, expected, "{name}");
    }
}

#[test]
fn no_secret_value_appears_in_the_compose_file() {
    let fixed = fixed_secrets();
    for (name, _, yml, env, _) in compose_files() {
        for secret in [fixed.postgres_password.expose(), fixed.jupyter_token.expose()] {
            assert!(
                !yml.contains(secret),
                "{name}: a secret is inline in docker-compose.yml"
            );
        }
        for line in env.lines().filter(|l| !l.starts_with('#')) {
            if let Some((key, value)) = line.split_once('=') {
                if !value.is_empty() && key != "AWS_DEFAULT_REGION" {
                    assert!(!yml.contains(value), "{name}: the value of {key} is inline");
                }
            }
        }
        // And every secret-looking variable is taken from .env.
        for key in [
            "PGPASSWORD",
            "POSTGRES_PASSWORD",
            "JUPYTER_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            for (service, def) in services(&serde_yaml::from_str::<Value>(&yml).unwrap()) {
                if let Some(v) = def["environment"].get(key) {
                    let v = v.as_str().unwrap();
                    assert!(v.starts_with("${"), "{name}: {service}.{key} is not a ${{VAR}}: {v}");
                }
            }
        }
    }
}

#[test]
fn every_interpolated_variable_is_defined_in_the_env_file() {
    for (name, _, yml, env, _) in compose_files() {
        let defined: BTreeSet<&str> = env
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        for line in yml.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let mut rest = line;
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap();
                let var = &after[..end];
                assert!(defined.contains(var), "{name}: ${{{var}}} is not in .env");
                rest = &after[end..];
            }
        }
    }
}

#[test]
fn restart_values_are_ones_compose_accepts() {
    for (name, compose, ..) in compose_files() {
        for (service, def) in services(&compose) {
            let restart = def["restart"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {service}.restart is not a string"));
            let ok = matches!(restart, "no" | "always" | "on-failure" | "unless-stopped")
                || restart
                    .strip_prefix("on-failure:")
                    .is_some_and(|n| n.parse::<u32>().is_ok());
            assert!(ok, "{name}: {service}.restart: {restart:?}");
            let expected = if service == "migrate" { "no" } else { "unless-stopped" };
            assert_eq!(restart, expected, "{name}: {service}");
        }
    }
}

/// Every scalar is a string except healthcheck retries: nothing is read as a boolean or a
/// number by accident (docker-compose 1.29 rejects a boolean in `environment`).
#[test]
fn every_value_is_a_quoted_string_except_retries() {
    fn walk(v: &Value, path: &str, bad: &mut Vec<String>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    walk(v, &format!("{path}.{}", k.as_str().unwrap_or("?")), bad);
                }
            }
            Value::Sequence(s) => {
                for (i, v) in s.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), bad);
                }
            }
            Value::Number(_) if path.ends_with(".healthcheck.retries") => {}
            Value::String(_) => {}
            other => bad.push(format!("{path}: {other:?}")),
        }
    }
    for (name, compose, ..) in compose_files() {
        let mut bad = Vec::new();
        walk(&compose, "", &mut bad);
        assert!(bad.is_empty(), "{name}: {bad:?}");
    }
}

#[test]
fn mlflow_starts_after_the_migration_which_waits_for_a_healthy_postgres() {
    for (name, compose, ..) in compose_files() {
        let s = &compose["services"];
        assert_eq!(
            s["mlflow"]["depends_on"]["migrate"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name}"
        );
        let migrate = s["migrate"]["command"].as_sequence().unwrap();
        assert_eq!(migrate[..3], ["mlflow", "db", "upgrade"].map(Value::from), "{name}");
        if s.get("postgres").is_some() {
            assert_eq!(
                s["migrate"]["depends_on"]["postgres"]["condition"].as_str(),
                Some("service_healthy"),
                "{name}"
            );
            let test = s["postgres"]["healthcheck"]["test"].as_sequence().unwrap();
            assert_eq!(test[1].as_str(), Some("pg_isready"), "{name}");
        }
        for service in ["guard", "mlflow"] {
            assert!(s[service]["healthcheck"].is_mapping(), "{name}: {service} healthcheck");
        }
    }
}

#[test]
fn mlflow_serves_artifacts_and_accepts_guards_host_and_the_public_origin() {
    for (name, compose, _, _, domain) in compose_files() {
        let mlflow = &compose["services"]["mlflow"];
        let command: Vec<&str> = mlflow["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(command.contains(&"--serve-artifacts"), "{name}");
        let hosts = mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].as_str().unwrap();
        let origins = mlflow["environment"]["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"]
            .as_str()
            .unwrap();
        assert!(hosts.split(',').any(|h| h == "mlflow:5000"), "{name}: {hosts}");
        let (host, origin) = if domain {
            ("mlflow.example.com", "https://mlflow.example.com")
        } else {
            ("localhost:8443", "https://localhost:8443")
        };
        assert!(hosts.split(',').any(|h| h == host), "{name}: {hosts}");
        assert!(origins.split(',').any(|o| o == origin), "{name}: {origins}");
    }
}

#[test]
fn named_volumes_are_declared_and_bind_mounts_are_paths() {
    for (name, compose, ..) in compose_files() {
        let declared: BTreeSet<&str> = compose["volumes"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        let mut used = BTreeSet::new();
        for (service, def) in services(&compose) {
            for v in def["volumes"].as_sequence().into_iter().flatten() {
                let v = v.as_str().unwrap();
                let (source, target) = v.split_once(':').unwrap();
                assert!(target.starts_with('/'), "{name}: {service}: {v}");
                if source.starts_with('/') || source.starts_with('.') {
                    continue;
                }
                assert!(declared.contains(source), "{name}: {service}: {source} undeclared");
                used.insert(source);
            }
        }
        assert_eq!(used, declared, "{name}: declared volumes unused");
    }
}
