"""Prints every (method, path) the installed MLflow tracking server serves, as a JSON list:
the Flask app's url_map and the FastAPI routes uvicorn serves natively (`mlflow server`'s
default). HEAD and OPTIONS, which the frameworks answer for every route, are left out.
tests/routes.rs compares the list with guard's classification in tests/mlflow-routes.txt."""

import json
import warnings

warnings.simplefilter("ignore")

from mlflow.server import app as flask_app  # noqa: E402
from mlflow.server.fastapi_app import app as fastapi_app  # noqa: E402

SKIP = {"HEAD", "OPTIONS"}


def fastapi_routes(routes, out):
    for r in routes:
        # FastAPI 0.12x wraps included routers; each candidate carries its full path.
        candidates = getattr(r, "effective_candidates", None)
        if candidates is not None:
            for c in candidates() if callable(candidates) else candidates:
                for m in set(getattr(c, "methods", None) or ()) - SKIP:
                    out.add((m, c.path))
            continue
        methods = getattr(r, "methods", None)
        if methods:
            for m in set(methods) - SKIP:
                out.add((m, r.path))
        # The Flask app is mounted at the root; its routes come from its url_map.


def main():
    out = set()
    for rule in flask_app.url_map.iter_rules():
        for m in rule.methods - SKIP:
            out.add((m, rule.rule))
    fastapi_routes(fastapi_app.routes, out)
    print(json.dumps(sorted(out)))


if __name__ == "__main__":
    main()
