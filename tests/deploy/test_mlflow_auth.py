"""MLflow behind its basic-auth app, as the compose stack runs it (issue 11, item 10): a real
server started by scripts/mlflow_server.sh with MLFLOW_AUTH=1 (users from the environment,
scripts/mlflow_auth.py). Anonymous calls get 401; the trainer login (Airflow) creates the model
and moves its `champion` alias; the reader login (web) loads it but cannot move the alias.
"""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
SERVED = "auth-served-model"   # the model the trainer manages (compose: $XRAY_MODEL_NAME)
USERS = {"admin": "admin-Pw-0123456789", "airflow": "trainer-Pw-0123456789", "web": "reader-Pw-0123456789"}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlflow-auth")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_DIR": str(home), "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
           "MLFLOW_AUTH": "1", "MLFLOW_AUTH_ADMIN_USER": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": USERS["admin"],
           "MLFLOW_TRAINER_USER": "airflow", "MLFLOW_TRAINER_PASSWORD": USERS["airflow"],
           "MLFLOW_READER_USER": "web", "MLFLOW_READER_PASSWORD": USERS["web"], "MLFLOW_START_TIMEOUT_S": "400",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-secret-0123456789", "MLFLOW_TRAINER_MODELS": SERVED}
    script = REPO / "scripts/mlflow_server.sh"
    proc = subprocess.run([str(script), "--background"], env=env, capture_output=True, text=True, timeout=450)
    log = home / "server.log"
    assert proc.returncode == 0, proc.stderr + (log.read_text()[-3000:] if log.exists() else "")
    yield f"http://127.0.0.1:{port}"
    subprocess.run([str(script), "--stop"], env=env, capture_output=True, timeout=60)


def api(url, path, user=None, method="GET", **kw):
    auth = (user, USERS[user]) if user else None
    return requests.request(method, f"{url}/api/2.0/mlflow/{path}", auth=auth, timeout=30, **kw)


def test_anonymous_is_refused_health_is_open(auth_server):
    assert api(auth_server, "experiments/search?max_results=1").status_code == 401
    assert api(auth_server, "experiments/search?max_results=1", user="web").status_code == 200
    assert requests.get(f"{auth_server}/health", timeout=10).status_code == 200
    bad = requests.get(f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=1", auth=("web", "wrong"), timeout=10)
    assert bad.status_code == 401


def test_only_the_trainer_moves_the_champion(auth_server):
    name = "auth-test-model"
    assert api(auth_server, "registered-models/create", "airflow", "POST", json={"name": name}).status_code == 200
    exp = api(auth_server, "experiments/create", "airflow", "POST", json={"name": "auth-test"}).json()["experiment_id"]
    run = api(auth_server, "runs/create", "airflow", "POST", json={"experiment_id": exp}).json()["run"]["info"]
    mv = api(auth_server, "model-versions/create", "airflow", "POST",
             json={"name": name, "source": f"runs:/{run['run_id']}/model", "run_id": run["run_id"]})
    assert mv.status_code == 200, mv.text
    version = mv.json()["model_version"]["version"]
    alias = {"name": name, "alias": "champion", "version": version}
    assert api(auth_server, "registered-models/alias", "web", "POST", json=alias).status_code == 403
    assert api(auth_server, "registered-models/alias", "airflow", "POST", json=alias).status_code == 200
    got = api(auth_server, f"registered-models/alias?name={name}&alias=champion", "web")
    assert got.status_code == 200 and got.json()["model_version"]["version"] == version
    # nor write into the trainer's runs (MLflow lets any login create experiments of its own:
    # they cannot touch the registered model, which is what the site serves)
    metric = {"run_id": run["run_id"], "key": "auc", "value": 1.0, "timestamp": 0}
    assert api(auth_server, "runs/log-metric", "web", "POST", json=metric).status_code == 403
    assert api(auth_server, "runs/log-metric", "airflow", "POST", json=metric).status_code == 200


def test_the_reader_creates_nothing(auth_server):
    """Issue 25 item 11: the web's login reads (GET, searches) and creates nothing: no registered
    model (so never the promotion lock), no experiment, no run."""
    from pipeline.mlops import aliases

    for name in (aliases.lock_name(SERVED), "reader-made-model"):
        r = api(auth_server, "registered-models/create", "web", "POST", json={"name": name})
        assert r.status_code == 403, r.text
    assert api(auth_server, "experiments/create", "web", "POST", json={"name": "reader-exp"}).status_code == 403
    exp = api(auth_server, "experiments/create", "airflow", "POST", json={"name": "trainer-exp-r"}).json()["experiment_id"]
    assert api(auth_server, "runs/create", "web", "POST", json={"experiment_id": exp}).status_code == 403
    # reads still work, including the read-only POST searches the client uses
    assert api(auth_server, "runs/search", "web", "POST", json={"experiment_ids": [exp]}).status_code == 200
    assert api(auth_server, f"experiments/get?experiment_id={exp}", "web").status_code == 200


def test_the_trainer_is_no_admin_and_manages_only_its_model(auth_server, monkeypatch):
    """Issue 25 item 12: the trainer has MANAGE on the served model, its lock and what it creates
    (its experiment, runs, artifacts), and only READ on anything else."""
    from pipeline.mlops import aliases, loading

    user = api(auth_server, "users/get?username=airflow", "admin").json()
    assert user["user"]["is_admin"] is False
    # the DAG's first `detect`: the auth app answers 403 for a model that does not exist yet; the
    # registry reads that as "no champion yet", as it reads a 404
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "airflow")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS["airflow"])
    assert loading.champion_version(SERVED, tracking_uri=auth_server) is None
    # someone else's model: readable, not writable
    assert api(auth_server, "registered-models/create", "admin", "POST", json={"name": "other-model"}).status_code == 200
    assert api(auth_server, "registered-models/get?name=other-model", "airflow").status_code == 200
    tag = {"name": "other-model", "key": "k", "value": "v"}
    assert api(auth_server, "registered-models/set-tag", "airflow", "POST", json=tag).status_code == 403
    assert api(auth_server, "registered-models/delete", "airflow", "DELETE", json={"name": "other-model"}).status_code == 403
    # its own model, created by the admin beforehand (an older deployment): still the trainer's
    assert api(auth_server, "registered-models/create", "admin", "POST", json={"name": SERVED}).status_code == 200
    exp = api(auth_server, "experiments/create", "airflow", "POST", json={"name": "trainer-exp"}).json()["experiment_id"]
    run = api(auth_server, "runs/create", "airflow", "POST", json={"experiment_id": exp}).json()["run"]["info"]
    put = requests.put(f"{auth_server}/api/2.0/mlflow-artifacts/artifacts/{exp}/{run['run_id']}/artifacts/note.txt",
                       data=b"hello", auth=("airflow", USERS["airflow"]), timeout=30)
    assert put.status_code == 200, put.text
    mv = api(auth_server, "model-versions/create", "airflow", "POST",
             json={"name": SERVED, "source": f"runs:/{run['run_id']}/model", "run_id": run["run_id"]})
    assert mv.status_code == 200, mv.text
    alias = {"name": SERVED, "alias": "champion", "version": mv.json()["model_version"]["version"]}
    assert api(auth_server, "registered-models/alias", "airflow", "POST", json=alias).status_code == 200
    # the promotion lock: create, touch (its lease clock), delete
    lock = aliases.lock_name(SERVED)
    assert api(auth_server, "registered-models/create", "airflow", "POST", json={"name": lock}).status_code == 200
    assert api(auth_server, "registered-models/update", "airflow", "PATCH",
               json={"name": lock, "description": "seen"}).status_code == 200
    assert api(auth_server, "registered-models/delete", "airflow", "DELETE", json={"name": lock}).status_code == 200
    # no administration: users and permissions stay the admin's
    assert api(auth_server, "users/create", "airflow", "POST",
               json={"username": "x", "password": "x-Pw-0123456789"}).status_code == 403
    grant = {"name": "other-model", "username": "airflow", "permission": "MANAGE"}
    assert api(auth_server, "registered-models/permissions/create", "airflow", "POST", json=grant).status_code == 403
