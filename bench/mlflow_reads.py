"""Read-heavy MLflow load for bench/upstreams.sh: seeds runs, then reads them through guard.

Usage:
  mlflow_reads.py seed URL RUNS OUT          create an experiment with RUNS runs (3 params, 5
                                             metrics, 2 tags each) straight at one MLflow server;
                                             writes "EXPERIMENT_ID RUN_ID..." to OUT
  mlflow_reads.py read URL CA USER PASSWORD SEED THREADS SECONDS
                                             THREADS threads, each with its own keep-alive
                                             session, alternate search_runs (20 runs of the
                                             experiment) and get_run (a random seeded run) for
                                             SECONDS; prints
                                             RESULT rps p50_ms p99_ms requests errors

Plain `requests` against MLflow's REST API (what MlflowClient sends, without its per-call
overhead, so the client process costs less of the shared CPU). guard's certificate is checked
against CA. Needs the venv that has mlflow (for requests).
"""

import random
import sys
import threading
import time

import requests


def seed(url, runs, out):
    s = requests.Session()
    s.trust_env = False  # no proxy variables between us and a loopback server

    def post(path, body):
        r = s.post(f"{url}/api/2.0/mlflow/{path}", json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    exp = post("experiments/create", {"name": f"bench-reads-{time.time_ns()}"})["experiment_id"]
    ids = []
    now = int(time.time() * 1000)
    for i in range(runs):
        run_id = post("runs/create", {"experiment_id": exp, "run_name": f"r{i}", "start_time": now})["run"]["info"]["run_id"]
        post(
            "runs/log-batch",
            {
                "run_id": run_id,
                "params": [{"key": k, "value": str(i)} for k in ("lr", "layers", "seed")],
                "metrics": [
                    {"key": f"m{k}", "value": i * 0.1 + k, "timestamp": now, "step": 0} for k in range(5)
                ],
                "tags": [{"key": "bench", "value": "reads"}, {"key": "i", "value": str(i)}],
            },
        )
        ids.append(run_id)
    with open(out, "w") as f:
        f.write(" ".join([exp, *ids]))


def read(url, ca, user, password, seed_file, threads, seconds):
    exp, *run_ids = open(seed_file).read().split()
    latencies, errors = [], [0]
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def worker(n):
        s = requests.Session()
        s.auth = (user, password)
        s.verify = ca
        # Else REQUESTS_CA_BUNDLE, when set, overrides `verify` (requests #3829).
        s.trust_env = False
        rng = random.Random(n)
        mine, bad, i = [], 0, n
        while time.monotonic() < deadline:
            t = time.monotonic()
            try:
                if i % 2:
                    r = s.post(
                        f"{url}/api/2.0/mlflow/runs/search",
                        json={"experiment_ids": [exp], "max_results": 20},
                        timeout=30,
                    )
                else:
                    r = s.get(f"{url}/api/2.0/mlflow/runs/get", params={"run_id": rng.choice(run_ids)}, timeout=30)
                ok = r.status_code == 200
                why = f"{r.status_code} {r.text[:200]}"
            except requests.RequestException as e:
                ok, why = False, repr(e)[:200]
            if not ok and not bad:
                print(f"mlflow_reads.py: first error in thread {n}: {why}", file=sys.stderr)
            if ok:
                mine.append(time.monotonic() - t)
            else:
                bad += 1
            i += 1
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    ts = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - start
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else 0
    print(f"RESULT {len(latencies) / elapsed:.1f} {pct(0.5):.2f} {pct(0.99):.2f} {len(latencies)} {errors[0]}")


def main():
    mode = sys.argv[1]
    if mode == "seed":
        seed(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif mode == "read":
        url, ca, user, password, seed_file, threads, seconds = sys.argv[2:9]
        read(url, ca, user, password, seed_file, int(threads), float(seconds))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
