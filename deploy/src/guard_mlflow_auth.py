"""MLflow's authorization function behind guard, written by `guard deploy --mlflow-permissions`.

guard signs people in (passwords, tokens, sessions, single sign-on); MLflow's basic-auth app
decides what each may do, per experiment and model. MLflow trusts the user guard names in
X-Forwarded-User only when the request also carries guard's shared secret in X-Guard-Secret
(compared in constant time): anything else that reaches MLflow's port directly gets 401, forged
header or not. MLflow listens on loopback or the private network only; the secret is the second
lock.

A user guard names is created in MLflow's user store on first use, with a random password
nobody is told (people sign in through guard, never to MLflow), and is an MLflow admin exactly
while guard's groups file puts them in `admin` (X-Guard-Admin: true). MLflow's own admin
account, `admin_username` in basic_auth.ini, passes only as one of guard's admins.
"""

import hmac
import os
import secrets

from flask import Response, request
from werkzeug.datastructures import Authorization

def _load_secret():
    """The secret from GUARD_UPSTREAM_SECRET (compose passes it from .env), or from the file
    GUARD_UPSTREAM_SECRET_FILE names (the one guard's --upstream-secret-file reads)."""
    value = os.environ.get("GUARD_UPSTREAM_SECRET", "")
    where = "GUARD_UPSTREAM_SECRET"
    if not value:
        where = os.environ.get("GUARD_UPSTREAM_SECRET_FILE", "")
        if not where:
            raise RuntimeError("neither GUARD_UPSTREAM_SECRET nor GUARD_UPSTREAM_SECRET_FILE is set")
        with open(where, encoding="ascii") as f:
            value = f.read()
    value = value.strip()
    if len(value) < 16:
        raise RuntimeError(f"{where}: expected a secret of 16 or more characters")
    return value.encode()


_SECRET = _load_secret()


def _refuse(status, why):
    return Response(why + "\n", status=status, mimetype="text/plain")


def authenticate():
    """The `authorization_function` of basic_auth.ini: who guard says is asking."""
    sent = request.headers.get("X-Guard-Secret", "").encode()
    if not hmac.compare_digest(sent, _SECRET):
        return _refuse(401, "MLflow is reached through guard only")
    user = request.headers.get("X-Forwarded-User", "")
    if not user:
        return _refuse(401, "guard named no user")
    admin = request.headers.get("X-Guard-Admin", "") == "true"
    from mlflow.server.auth import auth_config

    if user == auth_config.admin_username and not admin:
        return _refuse(403, f"{user} is MLflow's admin account; only guard's admins may use it")
    _sync(user, admin)
    return Authorization("basic", {"username": user, "password": ""})


def _sync(user, admin):
    """Creates `user` in MLflow's user store if it is not there, and keeps its admin flag."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth import store

    if not store.has_user(user):
        try:
            store.create_user(user, secrets.token_urlsafe(32), is_admin=admin)
            return
        except MlflowException:
            # Another worker created it first.
            if not store.has_user(user, use_primary=True):
                raise
    if store.get_user(user).is_admin != admin:
        store.update_user(user, is_admin=admin)
