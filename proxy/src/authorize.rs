//! What a role may do, decided from the method and the path alone (no body is read): a writer
//! anything, a reader what changes nothing in MLflow 3.17. Reads (GET, HEAD, OPTIONS) pass
//! except the few that act (the assistant, which runs tools) or that MLflow keeps for admins
//! (webhooks, gateway guardrails); a POST passes only when it is one of the searches and reads
//! MLflow does with POST; every other request is refused. Deny by default: a write route a
//! later MLflow adds stays closed to readers until it is listed here. The table is
//! `../shared/mlflow-permissions.md` section 3, checked against the installed MLflow by
//! `tests/routes.rs`.

use std::borrow::Cow;

use guard_config::roles::Role;
use http::Method;

/// The POSTs that only read (searches, batch reads, aggregates, GraphQL whose every root field
/// is a read in 3.17), as exact decoded paths. Not the UI's telemetry post: it writes no MLflow
/// data but sends usage records out, and a reader's UI works without it.
const READ_ONLY_POSTS: &[&str] = &[
    "/api/2.0/mlflow/experiments/search",
    "/ajax-api/2.0/mlflow/experiments/search",
    "/api/2.0/mlflow/runs/search",
    "/ajax-api/2.0/mlflow/runs/search",
    "/api/2.0/mlflow/logged-models/search",
    "/ajax-api/2.0/mlflow/logged-models/search",
    "/api/2.0/mlflow/registered-models/get-latest-versions",
    "/ajax-api/2.0/mlflow/registered-models/get-latest-versions",
    "/api/2.0/mlflow/artifacts/presigned-download-url",
    "/ajax-api/2.0/mlflow/artifacts/presigned-download-url",
    "/ajax-api/2.0/mlflow/experiments/search-datasets",
    "/api/3.0/mlflow/traces/search",
    "/ajax-api/3.0/mlflow/traces/search",
    "/api/3.0/mlflow/traces/batchGetInfos",
    "/ajax-api/3.0/mlflow/traces/batchGetInfos",
    "/api/3.0/mlflow/traces/calculate-filter-correlation",
    "/ajax-api/3.0/mlflow/traces/calculate-filter-correlation",
    "/api/3.0/mlflow/traces/metrics",
    "/ajax-api/3.0/mlflow/traces/metrics",
    "/api/3.0/mlflow/datasets/search",
    "/ajax-api/3.0/mlflow/datasets/search",
    "/api/3.0/mlflow/issues/search",
    "/ajax-api/3.0/mlflow/issues/search",
    "/api/3.0/mlflow/prompt-optimization/jobs/search",
    "/ajax-api/3.0/mlflow/prompt-optimization/jobs/search",
    "/ajax-api/3.0/jobs/search",
    "/graphql",
];

/// The assistant's routes, where a GET can act: its session stream runs a turn (with tools)
/// and a provider's health check calls out. A reader gets only what the UI reads on every
/// page (its settings and the providers and their models), see [`assistant_read`].
const ASSISTANT: &[&str] = &["/ajax-api/3.0/mlflow/assistant/", "/api/3.0/mlflow/assistant/"];

/// Reads a reader may not make, as prefixes of the normalised path: what MLflow itself keeps
/// for admins.
const DENIED_READ_PREFIXES: &[&str] = &[
    "/api/2.0/mlflow/webhooks",
    "/ajax-api/2.0/mlflow/webhooks",
    "/api/3.0/mlflow/gateway/guardrails/",
    "/ajax-api/3.0/mlflow/gateway/guardrails/",
];

/// Whether `role` may make this request. `path` is the request's path as sent (percent-encoded).
pub fn permits(role: Role, method: &Method, path: &str) -> bool {
    match role {
        Role::Writer => true,
        Role::Reader => reader_permits(method, path),
    }
}

fn reader_permits(method: &Method, path: &str) -> bool {
    // Decoded once, as Werkzeug and uvicorn route: `%2F` is a slash to MLflow. A path that is
    // not UTF-8 once decoded reaches no MLflow route, and is refused rather than guessed at.
    let Ok(decoded) = percent_encoding::percent_decode_str(path).decode_utf8() else {
        return false;
    };
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => {
            let normal = normalise(&decoded);
            if let Some(rest) = ASSISTANT.iter().find_map(|p| normal.strip_prefix(p)) {
                return assistant_read(rest);
            }
            !DENIED_READ_PREFIXES.iter().any(|p| normal.starts_with(p))
        }
        // Exact strings only: any variant (a trailing slash, `;x`, `//`, another case) is not
        // on the list, so it is refused, whatever MLflow would make of it.
        Method::POST => READ_ONLY_POSTS.contains(&&*decoded),
        _ => false,
    }
}

/// Whether a read under the assistant's prefix (`rest` follows it) only reads: `config`,
/// `providers` and `providers/NAME/models`. Anything else, a new route included, is refused.
fn assistant_read(rest: &str) -> bool {
    match rest.split('/').collect::<Vec<_>>()[..] {
        ["config"] | ["providers"] => true,
        ["providers", name, "models"] => !name.is_empty(),
        _ => false,
    }
}

/// The path a denial is checked against: lower case, `//` as `/`, `.` and `..` segments
/// resolved. MLflow answers 404 to most of these variants, but a denial that depended on that
/// would open the day an upstream (or a proxy behind guard) normalises paths.
fn normalise(path: &str) -> Cow<'_, str> {
    let lower = path.to_ascii_lowercase();
    let tricky = lower.contains("//") || lower.contains("/.") || lower != path;
    if !tricky {
        return Cow::Borrowed(path);
    }
    let mut segments: Vec<&str> = Vec::new();
    for s in lower.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(lower.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if lower.ends_with('/') || lower.ends_with("/.") || lower.ends_with("/..") {
        out.push('/');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_reads_and_searches_and_changes_nothing() {
        let get = Method::GET;
        let post = Method::POST;
        for (method, path, allowed) in [
            (&get, "/", true),
            (&get, "/static-files/static/js/main.js", true),
            (&get, "/api/2.0/mlflow/experiments/get", true),
            (&get, "/ajax-api/2.0/mlflow/runs/get", true),
            (&get, "/get-artifact", true),
            (
                &get,
                "/api/2.0/mlflow-artifacts/artifacts/0/abc/artifacts/model.pkl",
                true,
            ),
            (&Method::HEAD, "/version", true),
            (&Method::OPTIONS, "/api/2.0/mlflow/experiments/create", true),
            (&post, "/ajax-api/2.0/mlflow/runs/search", true),
            (&post, "/api/2.0/mlflow/experiments/search", true),
            (&post, "/graphql", true),
            (&post, "/ajax-api/3.0/jobs/search", true),
            // Writes.
            (&post, "/api/2.0/mlflow/experiments/create", false),
            (&post, "/api/2.0/mlflow/runs/log-metric", false),
            (&post, "/api/2.0/mlflow/runs/set-tag", false),
            (&post, "/api/2.0/mlflow/runs/delete", false),
            (&post, "/api/2.0/mlflow/registered-models/create", false),
            (&post, "/api/2.0/mlflow/model-versions/create", false),
            (&post, "/ajax-api/2.0/mlflow/upload-artifact", false),
            (&post, "/ajax-api/3.0/jobs/", false),
            (&post, "/v1/traces", false),
            (
                &Method::PUT,
                "/api/2.0/mlflow-artifacts/artifacts/0/abc/artifacts/x",
                false,
            ),
            (&Method::PATCH, "/api/2.0/mlflow/registered-models/update", false),
            (&Method::DELETE, "/api/2.0/mlflow/model-versions/delete", false),
            (&Method::from_bytes(b"PROPFIND").unwrap(), "/", false),
            // Reads that act, or that MLflow keeps for admins.
            (&get, "/ajax-api/3.0/mlflow/assistant/sessions/1/stream", false),
            (&get, "/ajax-api/3.0/mlflow/assistant/providers/openai/health", false),
            (&get, "/ajax-api/3.0/mlflow/assistant/something-new", false),
            (&get, "/ajax-api/3.0/mlflow/assistant/config", true),
            (&get, "/ajax-api/3.0/mlflow/assistant/providers", true),
            (&get, "/ajax-api/3.0/mlflow/assistant/providers/openai/models", true),
            (&post, "/ajax-api/3.0/mlflow/assistant/message", false),
            (&get, "/api/2.0/mlflow/webhooks", false),
            (&get, "/api/2.0/mlflow/webhooks/123", false),
            (&get, "/ajax-api/3.0/mlflow/gateway/guardrails/list", false),
        ] {
            assert_eq!(permits(Role::Reader, method, path), allowed, "{method} {path}");
            assert!(permits(Role::Writer, method, path), "a writer may {method} {path}");
        }
    }

    #[test]
    fn encoded_slashes_dot_segments_case_and_suffixes_never_reach_a_write_or_a_denied_read() {
        let post = Method::POST;
        for path in [
            "/api/2.0/mlflow/experiments%2Fcreate",
            "/api/2.0/mlflow/runs/search/",
            "/api/2.0/mlflow/runs/search;x",
            "/api/2.0/mlflow/runs//search",
            "/api/2.0/mlflow/./runs/search",
            "/API/2.0/mlflow/runs/search",
            "/api/2.0/mlflow/runs/search%00",
            "/api/2.0/mlflow/runs/search%ff",
            "/graphql/",
        ] {
            assert!(!permits(Role::Reader, &post, path), "POST {path}");
        }
        // Encoded, it is the very path MLflow routes: allowed exactly when the plain one is.
        assert!(permits(Role::Reader, &post, "/api/2.0/mlflow/runs%2Fsearch"));
        for path in [
            "/ajax-api/3.0/mlflow/assistant%2Fsessions/1/stream",
            "/ajax-api/3.0/mlflow/Assistant/sessions/1/stream",
            "/AJAX-API/3.0/mlflow/assistant/sessions/1/stream",
            "/ajax-api/3.0/mlflow//assistant/sessions/1/stream",
            "/ajax-api/3.0/mlflow/./assistant/sessions/1/stream",
            "/ajax-api/3.0/mlflow/x/../assistant/sessions/1/stream",
            "/ajax-api/3.0/mlflow/x/%2e%2e/assistant/sessions/1/stream",
            "//api/2.0/mlflow/webhooks",
            "/api/2.0/mlflow/webhooks%2F1",
        ] {
            assert!(!permits(Role::Reader, &Method::GET, path), "GET {path}");
        }
    }

    #[test]
    fn normalising_leaves_plain_paths_borrowed() {
        assert!(matches!(normalise("/api/2.0/mlflow/runs/get"), Cow::Borrowed(_)));
        assert_eq!(normalise("/A//b/./c/../d/"), "/a/b/d/");
        assert_eq!(normalise("/.."), "/");
    }
}
