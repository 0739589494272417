"""Prepare MLflow's basic-auth app (issue 11, item 10): called by scripts/mlflow_server.sh when
MLFLOW_AUTH=1, before the server starts.

Writes the app's ini file (MLFLOW_AUTH_CONFIG_PATH) and makes the user store match the
environment: the admin, a trainer login (Airflow: writes runs and moves the `champion` alias; an
MLflow admin, see below) and a reader login (the web site: reads only, can never move the alias).
Every authenticated user may read (default_permission = READ); anonymous requests get 401. Passwords
are (re)set from the environment on every start, so rotating one is: edit .env, restart mlflow.

Environment: MLFLOW_AUTH_ADMIN_USER/_PASSWORD, MLFLOW_TRAINER_USER/_PASSWORD,
MLFLOW_READER_USER/_PASSWORD, MLFLOW_AUTH_DATABASE_URI (default sqlite:///<dir>/basic_auth.db).
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
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n")
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(db_uri)
    users = [(admin, admin_pw, True)]
    # The trainer is an MLflow admin: the auth app answers 403 (not 404) for a registered model that
    # does not exist yet, and the DAG's first `detect` asks for the champion of such a model
    # (pipeline.registry reads only 404 as "no champion yet"). The reader stays read-only.
    for role, is_admin in (("TRAINER", True), ("READER", False)):
        name, pw = os.environ.get(f"MLFLOW_{role}_USER"), os.environ.get(f"MLFLOW_{role}_PASSWORD")
        if name and pw:
            users.append((name, pw, is_admin))
    for name, pw, is_admin in users:
        if store.has_user(name, use_primary=True):
            store.update_user(name, password=pw, is_admin=is_admin)
        else:
            store.create_user(name, pw, is_admin=is_admin)
    print(f"mlflow_auth: basic auth on, users {', '.join(u[0] for u in users)}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
