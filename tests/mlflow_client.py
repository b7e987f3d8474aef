"""Drives the real MLflow Python client for guard's end-to-end tests (tests/mlflow.rs).

Usage: python mlflow_client.py MODE [ARTIFACT_BYTES]

  roundtrip            create an experiment and a run, log params, metrics and an artifact of
                       ARTIFACT_BYTES random bytes (default 50 MiB), then read everything back
                       with a fresh client and compare the downloaded artifact's sha256
  expect-auth-failure  try to create an experiment; exit 0 only if that fails with a 401
  count-experiments    print how many experiments the server holds (all lifecycle stages)
  workload SECONDS TAG [STOP_FILE]
                       for SECONDS or until STOP_FILE exists, in a new experiment: create a run named TAG-N, log two params,
                       two metrics and a tag on it, again and again, one request at a time; a
                       failed request is recorded (kind, start and end time, HTTP status) and the
                       loop goes on. Prints how many of each kind succeeded and every failure;
                       exits 1 if any failed. Run it with MLFLOW_HTTP_REQUEST_MAX_RETRIES=0, so
                       an error the client would otherwise retry silently (a 502) shows.
  role-ops             as the configured user or token: read a run (search, metric history,
                       artifact download) made by `roundtrip`, then try every kind of write
                       (create_experiment, log_metric, set_tag, delete_run, an artifact upload,
                       create_registered_model); prints each operation's outcome, "ok" or the
                       HTTP status. Reads must succeed; the caller checks the writes.

Everything else comes from the environment, as in a user's script: MLFLOW_TRACKING_URI,
MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_USERNAME / _PASSWORD, MLFLOW_TRACKING_TOKEN.
Only the public client API is used. The last line on stdout is one JSON object; a failed check
exits non-zero with the reason on stderr.
"""

import hashlib
import json
import os
import re
import sys
import tempfile
import time
import uuid

T0 = time.monotonic()

import mlflow  # noqa: E402  (import time is part of what the caller measures)
import requests  # noqa: E402
from mlflow.entities import ViewType  # noqa: E402
from mlflow.exceptions import MlflowException, RestException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

IMPORT_S = time.monotonic() - T0

DEFAULT_ARTIFACT_BYTES = 50 * 1024 * 1024
CHUNK = 1024 * 1024


def fail(message):
    print(f"mlflow_client.py: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def write_random(path, size):
    """Writes `size` random bytes to `path` and returns their sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def roundtrip(artifact_bytes):
    name = f"guard-e2e-{uuid.uuid4().hex}"
    params = {"alpha": "0.5", "layers": "3", "optimizer": "adam"}
    losses = [1.0 / (step + 1) for step in range(10)]
    timings = {}

    with tempfile.TemporaryDirectory() as tmp:
        blob = os.path.join(tmp, "blob.bin")
        sha_written = write_random(blob, artifact_bytes)

        t = time.monotonic()
        writer = MlflowClient()
        experiment_id = writer.create_experiment(name)
        run = writer.create_run(experiment_id, run_name="guard-e2e")
        run_id = run.info.run_id
        for key, value in params.items():
            writer.log_param(run_id, key, value)
        for step, loss in enumerate(losses):
            writer.log_metric(run_id, "loss", loss, step=step)
        timings["log_s"] = time.monotonic() - t

        t = time.monotonic()
        writer.log_artifact(run_id, blob, artifact_path="blobs")
        timings["upload_s"] = time.monotonic() - t
        writer.set_terminated(run_id)

        # A fresh client: nothing may come from the writer's state.
        t = time.monotonic()
        reader = MlflowClient()
        experiment = reader.get_experiment_by_name(name)
        check(experiment is not None, f"experiment {name} not found by name")
        check(
            experiment.experiment_id == experiment_id,
            f"experiment id {experiment.experiment_id} != {experiment_id}",
        )
        got = reader.get_run(run_id)
        check(got.info.experiment_id == experiment_id, "run is in another experiment")
        check(got.info.status == "FINISHED", f"run status {got.info.status}")
        check(got.data.params == params, f"params {got.data.params} != {params}")
        history = sorted(reader.get_metric_history(run_id, "loss"), key=lambda m: m.step)
        check(
            [(m.step, m.value) for m in history] == list(enumerate(losses)),
            f"metric history {[(m.step, m.value) for m in history]}",
        )
        listed = {f.path: f.file_size for f in reader.list_artifacts(run_id, "blobs")}
        check(
            listed == {"blobs/blob.bin": artifact_bytes},
            f"artifacts listed {listed}",
        )
        timings["read_s"] = time.monotonic() - t

        t = time.monotonic()
        dst = os.path.join(tmp, "download")
        os.mkdir(dst)
        local = reader.download_artifacts(run_id, "blobs/blob.bin", dst)
        timings["download_s"] = time.monotonic() - t
        size_read = os.path.getsize(local)
        sha_read = sha256_file(local)

    check(size_read == artifact_bytes, f"downloaded {size_read} bytes, uploaded {artifact_bytes}")
    check(sha_read == sha_written, f"downloaded sha256 {sha_read} != uploaded {sha_written}")
    return {
        "mode": "roundtrip",
        "experiment": name,
        "experiment_id": experiment_id,
        "run_id": run_id,
        "artifact_bytes": artifact_bytes,
        "sha256_uploaded": sha_written,
        "sha256_downloaded": sha_read,
        "metric_steps": len(history),
        **{k: round(v, 3) for k, v in timings.items()},
    }


def http_status(error):
    """The HTTP status behind a client exception, from the error code or the message."""
    if isinstance(error, RestException) and error.get_http_status_code() == 401:
        return 401
    # A 401 without an MLflow JSON body: "API request to endpoint ... failed with error code 401
    # != 200. Response body: ..."
    if "failed with error code 401 " in str(error):
        return 401
    return None


def expect_auth_failure():
    name = f"guard-e2e-rejected-{uuid.uuid4().hex}"
    t = time.monotonic()
    try:
        experiment_id = MlflowClient().create_experiment(name)
    except MlflowException as e:
        elapsed = time.monotonic() - t
        summary = {
            "mode": "expect-auth-failure",
            "elapsed_s": round(elapsed, 3),
            "exception": type(e).__name__,
            "error_code": getattr(e, "error_code", None),
            "message": str(e)[:300],
        }
        print(json.dumps(summary))
        if http_status(e) != 401:
            fail(f"failed, but not with a 401: {type(e).__name__}: {e}")
        return
    fail(f"creating experiment {name} succeeded (id {experiment_id}); expected a 401")


def outcome(op):
    """Runs `op`: "ok", or the HTTP status it failed with (0 when none is known)."""
    try:
        op()
        return "ok"
    except requests.HTTPError as e:
        # Artifact uploads go through requests directly and raise its error.
        return e.response.status_code if e.response is not None else 0
    except MlflowException as e:
        if isinstance(e, RestException):
            return e.get_http_status_code()
        text = str(e)
        for code in (401, 403, 404, 500, 502):
            if f"error code {code}" in text or f"{code} Client Error" in text or f"status code {code}" in text:
                return code
        return f"0: {text[:200]}"


def role_ops(experiment_id, run_id):
    client = MlflowClient()
    result = {"mode": "role-ops"}
    with tempfile.TemporaryDirectory() as tmp:
        runs = client.search_runs([experiment_id])
        check(any(r.info.run_id == run_id for r in runs), f"run {run_id} not found by search")
        history = client.get_metric_history(run_id, "loss")
        check(len(history) == 10, f"{len(history)} loss steps read back")
        local = client.download_artifacts(run_id, "blobs", tmp)
        check(os.listdir(local) == ["blob.bin"], f"downloaded {os.listdir(local)}")
        result["reads"] = "ok"
        note = os.path.join(tmp, "note.txt")
        with open(note, "w") as f:
            f.write("written by role-ops")
        result["create_experiment"] = outcome(
            lambda: client.create_experiment(f"guard-role-{uuid.uuid4().hex}")
        )
        result["log_metric"] = outcome(lambda: client.log_metric(run_id, "role", 1.0))
        result["set_tag"] = outcome(lambda: client.set_tag(run_id, "role", "x"))
        result["log_artifact"] = outcome(lambda: client.log_artifact(run_id, note, "role"))
        result["create_registered_model"] = outcome(
            lambda: client.create_registered_model(f"guard-role-{uuid.uuid4().hex}")
        )
        # Last: a writer's delete would take the run the others act on.
        result["delete_run"] = outcome(lambda: client.delete_run(run_id))
    print(json.dumps(result))


def failure_status(error):
    """The HTTP status in a failed request's error text (0 for a connection error)."""
    text = str(error)
    # "too many 502 error responses" (urllib3 with retries off), "error code 502 != 200".
    match = re.search(r"too many (\d{3}) error responses|error code (\d{3})", text)
    if match:
        return int(match.group(1) or match.group(2))
    if isinstance(error, RestException):
        return error.get_http_status_code()
    return 0


def workload(seconds, tag, stop_file=None):
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    # With retries on, a 502 the client retried would look like a success.
    check(MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 0, "run the workload with MLFLOW_HTTP_REQUEST_MAX_RETRIES=0")
    client = MlflowClient()
    experiment_id = client.create_experiment(f"scale-out-{tag}-{uuid.uuid4().hex}")
    ok = {"runs": 0, "params": 0, "metrics": 0, "tags": 0}
    failures = []

    def attempt(kind, op):
        start = time.time()
        try:
            result = op()
        except Exception as e:  # noqa: BLE001  (every failure counts, whatever raised it)
            failures.append(
                {
                    "kind": kind,
                    "start": start,
                    "end": time.time(),
                    "status": failure_status(e),
                    "error": f"{type(e).__name__}: {str(e)[:300]}",
                }
            )
            return None
        ok[kind] += 1
        return result if result is not None else True

    began = time.monotonic()
    deadline = began + seconds
    iterations = 0
    while time.monotonic() < deadline and not (stop_file and os.path.exists(stop_file)):
        n = iterations
        iterations += 1
        run = attempt("runs", lambda: client.create_run(experiment_id, run_name=f"{tag}-{n}"))
        if run is None:
            continue
        run_id = run.info.run_id
        attempt("params", lambda: client.log_param(run_id, "n", str(n)))
        attempt("params", lambda: client.log_param(run_id, "worker", tag))
        # Distinct steps: a metric sent twice would be two rows that differ only in timestamp.
        attempt("metrics", lambda: client.log_metric(run_id, "loss", 1.0 / (n + 1), step=n))
        attempt("metrics", lambda: client.log_metric(run_id, "n", float(n), step=n))
        attempt("tags", lambda: client.set_tag(run_id, "worker", tag))
    summary = {
        "mode": "workload",
        "experiment_id": experiment_id,
        "iterations": iterations,
        "seconds": round(time.monotonic() - began, 1),
        "ok": ok,
        "requests": sum(ok.values()) + len(failures),
        "failures": failures,
    }
    print(json.dumps(summary))
    if failures:
        sys.exit(1)


def count_experiments():
    client = MlflowClient()
    count, token = 0, None
    while True:
        page = client.search_experiments(
            view_type=ViewType.ALL, max_results=1000, page_token=token
        )
        count += len(page)
        token = page.token
        if not token:
            break
    print(json.dumps({"mode": "count-experiments", "experiments": count}))


def main():
    if len(sys.argv) < 2:
        fail("usage: mlflow_client.py roundtrip|expect-auth-failure|count-experiments [BYTES]")
    mode = sys.argv[1]
    if mode == "roundtrip":
        size = int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_ARTIFACT_BYTES
        summary = roundtrip(size)
        summary["mlflow_version"] = mlflow.__version__
        summary["import_s"] = round(IMPORT_S, 3)
        summary["elapsed_s"] = round(time.monotonic() - T0 - IMPORT_S, 3)
        print(json.dumps(summary))
    elif mode == "expect-auth-failure":
        expect_auth_failure()
    elif mode == "count-experiments":
        count_experiments()
    elif mode == "workload":
        workload(float(sys.argv[2]), sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    elif mode == "role-ops":
        role_ops(sys.argv[2], sys.argv[3])
    else:
        fail(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
