"""Prepare MLflow's basic-auth app (issue 11, item 10): called by scripts/mlflow_server.sh when
MLFLOW_AUTH=1, before the server starts.

Writes the app's ini file (MLFLOW_AUTH_CONFIG_PATH) and makes the user store match the
environment: the admin, a trainer login (Airflow: writes runs and moves the `champion` alias) and
a reader login (the web site: reads only, can never move the alias).
Every authenticated user may read (default_permission = READ); anonymous requests get 401. Passwords
are (re)set from the environment on every start, so rotating one is: edit .env, restart mlflow.

Least privilege (issue 25 items 11, 12):
- the trainer is no MLflow admin. It gets MANAGE on the served model(s) (MLFLOW_TRAINER_MODELS) and
  their promotion locks here, and MLflow itself gives it MANAGE on whatever it creates (its
  experiment, runs, artifacts, logged models). Anything else it only reads.
- the reader creates nothing: `authenticate` (this module, the server's authorization_function)
  answers 403 to any request of the reader that is not a read (GET/HEAD, or a POST search), so it
  can neither create experiments and models (MLflow lets any login do that) nor squat the lock.

Environment: MLFLOW_AUTH_ADMIN_USER/_PASSWORD, MLFLOW_TRAINER_USER/_PASSWORD,
MLFLOW_READER_USER/_PASSWORD, MLFLOW_TRAINER_MODELS (comma list, default $XRAY_MODEL_NAME or
chest-xray-resnet18), MLFLOW_AUTH_DATABASE_URI (default sqlite:///<dir>/basic_auth.db).
Usage: python scripts/mlflow_auth.py INI_PATH DEFAULT_DIR
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def main(ini: Path, home: Path) -> None:
    db_uri = os.environ.get("MLFLOW_AUTH_DATABASE_URI") or f"sqlite:///{home / 'basic_auth.db'}"
    admin = os.environ.get("MLFLOW_AUTH_ADMIN_USER", "admin")
    admin_pw = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") or sys.exit("mlflow_auth: MLFLOW_AUTH_ADMIN_PASSWORD is not set")
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {db_uri}\n"
        f"admin_username = {admin}\n"
        # scripts/ is on the server's PYTHONPATH (mlflow_server.sh)
        "authorization_function = mlflow_auth:authenticate\n"
        "grant_default_workspace_access = false\n")
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(db_uri)
    users = [(admin, admin_pw, True)]
    for role in ("TRAINER", "READER"):
        name, pw = os.environ.get(f"MLFLOW_{role}_USER"), os.environ.get(f"MLFLOW_{role}_PASSWORD")
        if name and pw:
            users.append((name, pw, False))
    for name, pw, is_admin in users:
        if store.has_user(name, use_primary=True):
            store.update_user(name, password=pw, is_admin=is_admin)
        else:
            store.create_user(name, pw, is_admin=is_admin)
    trainer = os.environ.get("MLFLOW_TRAINER_USER")
    if trainer and store.has_user(trainer, use_primary=True):
        for model in trainer_models():
            # the lock name as pipeline.mlops.aliases.lock_name (not imported: the server needs no pipeline)
            for name in (model, f"locks.promotion.{model}"):
                grant_manage(store, name, trainer)
    print(f"mlflow_auth: basic auth on, users {', '.join(u[0] for u in users)}", file=sys.stderr)


def trainer_models() -> list[str]:
    models = os.environ.get("MLFLOW_TRAINER_MODELS") or os.environ.get("XRAY_MODEL_NAME") or "chest-xray-resnet18"
    return [m.strip() for m in models.split(",") if m.strip()]


def grant_manage(store, model: str, username: str) -> None:
    """MANAGE on a registered model name (it need not exist yet), created or updated."""
    from mlflow.exceptions import MlflowException

    try:
        store.create_registered_model_permission(model, username, "MANAGE")
    except MlflowException:   # already granted (an earlier start, or the trainer created it)
        store.update_registered_model_permission(model, username, "MANAGE")


# Requests a read-only login may make: every GET/HEAD, and the POST searches of the REST API
# (runs/search, experiments/search, logged-models/search, ...), which change nothing.
_READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def _is_read(method: str, path: str) -> bool:
    return method in _READ_METHODS or (method == "POST" and path.rstrip("/").endswith("/search"))


def authenticate():
    """The server's authorization function: MLflow's basic auth, plus the reader's no-write rule."""
    from flask import Response, request
    from mlflow.server.auth import authenticate_request_basic_auth

    auth = authenticate_request_basic_auth()
    reader = os.environ.get("MLFLOW_READER_USER")
    if (not isinstance(auth, Response) and reader and auth.username == reader
            and not _is_read(request.method, request.path)):
        return Response("the read-only login may not change anything", status=403)
    return auth


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
