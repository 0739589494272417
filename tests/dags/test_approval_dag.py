"""Shadow wait and human sign-off in the retraining DAG, with real `dag.test()` runs.

Beside each run: a real MLflow server, a PostgreSQL metadata database shared with a real
`airflow api-server`, through which a reviewer (SimpleAuthManager user) answers the approval task the
way the UI's Required Actions page does, from another thread while dag.test waits; and, for the
timeout, the scheduler's own sweep of tasks awaiting input. The site's shadow evidence comes from a
stand-in `diagnosis.shadow` (tests/dags/standin) on the task processes' path only.

Every run trains an untrained network (train.epochs=0) on the same data version under a new model
name, named in the params file ($XRAY_PARAMS) alone ($XRAY_MODEL_NAME unset): no champion and floors
at 0, so the policy always says promote; what happens next is the subject of each test. These are
also the DAG's runs with PostgreSQL as Airflow's metadata database (as in production and CI).
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from dagtest_utils import (REPO, TINY_OVERRIDES, DataWorld, Webhook, airflow_env, alias, migrate, mlflow_client,
                           policy_params, run_dag, states, versions)
from hitl_utils import ApiServer, sweep_timeouts

pytestmark = [pytest.mark.timeout(2400), pytest.mark.slow]

STANDIN = Path(__file__).resolve().parent / "standin"
ZERO_FLOORS = ["promotion.floors.auc=0.0", "promotion.floors.sensitivity=0.0",
               "promotion.stress_floors.auc=0.0", "promotion.stress_floors.sensitivity=0.0"]
CONF = {"overrides": TINY_OVERRIDES + ["train.epochs=0"]}
REVIEWERS = {"alice": "alice-reviews-models", "bob": "bob-reviews-models"}


@pytest.fixture(scope="module")
def stack(shared_datasets, mlflow_server, tmp_path_factory):
    """One data version, one Airflow (PostgreSQL) with its api-server, one MLflow."""
    psycopg2 = pytest.importorskip("psycopg2")
    root = tmp_path_factory.mktemp("approval")
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    admin.autocommit = True
    db = f"airflow_hitl_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    try:
        yield from _stack(root, db, mlflow_server)
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
            cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
        admin.close()


def _stack(root: Path, db: str, mlflow_server: str):
    world = DataWorld(root / "world")
    world.add_images(60, seed=3)
    world.publish()
    shadow_file = root / "shadow.json"
    shadow_file.write_text("{}")
    chat = Webhook()                    # the notifications, through apprise (connection xray_apprise)
    env = airflow_env(root / "airflow", sql_conn=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
                      XRAY_REPO=str(world.workspace), MLFLOW_TRACKING_URI=mlflow_server,
                      AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
                      AIRFLOW__API_AUTH__JWT_SECRET="approval-tests-jwt-secret-0123456789",
                      AIRFLOW__API__BASE_URL="http://airflow.example:8080",
                      XRAY_SITE_URL="https://site.example", XRAY_MLFLOW_UI="http://mlflow.example:5000",
                      XRAY_TEST_SHADOW_FILE=str(shadow_file), DJANGO_ENV="development",
                      DATABASE_URL=f"sqlite:///{root / 'site.db'}", XRAY_WEB_DATA_DIR=str(root / "site"),
                      AIRFLOW_CONN_XRAY_APPRISE=chat.connection)
    env["PYTHONPATH"] = f"{STANDIN}:{REPO}:{REPO / 'django_app'}"
    env.pop("XRAY_MODEL_NAME", None)    # the params file names the model (the registry once fell back to params.yaml's)
    migrate(env)
    api = ApiServer(env, root / "airflow", REVIEWERS)
    try:
        yield {"env": env, "api": api, "client": mlflow_client(mlflow_server), "root": root, "shadow": shadow_file,
               "chat": chat, "dsn": f"postgresql://postgres@127.0.0.1:5432/{db}"}
    finally:
        api.stop()
        chat.server.shutdown()


def _env(stack, label: str, *settings: str) -> tuple[dict, str]:
    name = f"hitl-{label}-{uuid.uuid4().hex[:6]}"
    params = policy_params(stack["root"] / f"{name}.yaml", *ZERO_FLOORS, f"registry.model_name={name}", *settings)
    return {**stack["env"], "XRAY_PARAMS": params}, name


class Background:
    """A dag.test run in a thread: the test answers for the reviewer meanwhile."""

    def __init__(self, env: dict):
        self.result, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(env,), daemon=True)
        self.thread.start()

    def _run(self, env):
        try:
            self.result = run_dag(env, CONF, timeout=1500)
        except Exception as exc:  # noqa: BLE001 - re-raised in the test thread by join()
            self.error = exc

    def join(self) -> dict:
        self.thread.join(1600)
        if self.error:
            raise self.error
        return self.result


def _tags(stack, name: str) -> dict:
    [(version, tags)] = versions(stack["client"], name).items()
    return {"version": version, **tags}


def _wait_tag(stack, name: str, key: str, value: str, timeout: float = 1500) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = versions(stack["client"], name)
        if found and next(iter(found.values())).get(key) == value:
            return
        time.sleep(2)
    raise TimeoutError(f"{name}: tag {key}={value} never seen")


def test_auto_promotes_without_waiting(stack):
    """approval: auto and no shadow requirement: nothing waits, the site DB is not touched. Also the
    DAG's full path on PostgreSQL, acting on the model the params file names (once
    test_retrain_dag.py::test_dag_on_postgresql, which ran one more such run of its own)."""
    import psycopg2

    from pipeline.settings import config

    calls = Path(f"{stack['shadow']}.calls")
    calls.unlink(missing_ok=True)
    env, name = _env(stack, "auto", "promotion.approval=auto")
    run = run_dag(env, CONF, timeout=1500)
    assert run["state"] == "success", run["log"][-3000:]
    assert states(run).items() >= {"detect": "success", "validate": "success", "train": "success",
                                    "evaluate": "success", "decide": "success", "shadow": "success",
                                    "approval": "skipped", "verdict": "success", "promote": "success",
                                    "reject": "skipped", "notify": "success"}.items()
    tags = _tags(stack, name)
    assert alias(stack["client"], name, "champion") == tags["version"] == run["xcom"]["train"]["version"]
    assert tags["decision"] == "promoted" and "approval.by" not in tags
    assert not calls.exists()    # no shadow evidence asked for
    # every task acted on the params file's model, none on params.yaml's
    assert run["xcom"]["detect"]["model_name"] == name
    assert not stack["client"].search_registered_models(f"name = '{config.model_name(config.load_params())}'")
    # the run is Airflow's record in PostgreSQL
    with psycopg2.connect(stack["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT state FROM dag_run WHERE dag_id = 'xray_retrain' AND run_id = %s", (run["run_id"],))
        rows = cur.fetchall()
        cur.execute("SELECT task_id, state FROM task_instance WHERE dag_id = 'xray_retrain' AND run_id = %s",
                    (run["run_id"],))
        task_states = dict(cur.fetchall())
    assert rows == [("success",)]
    assert task_states["train"] == "success" and task_states["notify"] == "success"


def test_reviewer_approves(stack):
    env, name = _env(stack, "approve", "promotion.approval=required")
    run = Background(env)
    detail = stack["api"].pending("alice", "xray_retrain")
    version = _tags(stack, name)["version"]
    assert _tags(stack, name)["decision"] == "pending_approval"      # the site shadows it meanwhile
    assert alias(stack["client"], name, "champion") is None
    body = detail["body"]
    assert detail["subject"] == f"Promote {name} v{version} to champion?"
    assert detail["options"] == ["Approve", "Reject"] and "comment" in detail["params"]
    for shown in ("in distribution", "under stress", "AUC", "mean AUC over shifts", "no champion yet",
                  f"http://mlflow.example:5000/#/models/{name}/versions/{version}",
                  "https://site.example/staff/shadow/", "### Model card",
                  f"Chest X-ray pneumonia classifier, version {version}"):
        assert shown in body, shown
    [asked] = stack["chat"].titled(f"approval needed: {name} v{version}")     # with the page to answer on
    ti = detail["task_instance"]
    assert (f"http://airflow.example:8080/dags/xray_retrain/runs/{ti['dag_run_id']}/tasks/approval/required_actions"
            in asked["message"])
    answer = stack["api"].respond("alice", detail, "Approve", "heat maps on the lungs; local figures fine")
    assert answer.status_code == 200, answer.text
    result = run.join()
    assert result["state"] == "success", result["log"][-3000:]
    assert states(result).items() >= {"approval": "success", "verdict": "success", "promote": "success",
                                       "reject": "skipped"}.items()
    tags = _tags(stack, name)
    assert alias(stack["client"], name, "champion") == version
    assert tags["decision"] == "promoted"
    assert tags["approval.by"] == "alice"
    assert tags["approval.comment"] == "heat maps on the lungs; local figures fine"
    assert tags["approval.at"].startswith(time.strftime("%Y-%m-%d", time.gmtime()))
    assert "approved by alice: heat maps on the lungs" in tags["decision_reason"]
    decision = result["xcom"]["notify"]["decision"]
    assert decision["approval"]["via"] == "airflow-hitl" and decision["actor"].startswith("airflow:xray_retrain/")


def test_reviewer_rejects(stack):
    env, name = _env(stack, "reject", "promotion.approval=required")
    run = Background(env)
    detail = stack["api"].pending("bob", "xray_retrain")
    answer = stack["api"].respond("bob", detail, "Reject", "misses small consolidations on our films")
    assert answer.status_code == 200, answer.text
    again = stack["api"].respond("alice", detail, "Approve", "")
    assert again.status_code == 409            # one answer per request, the first one stands
    result = run.join()
    assert result["state"] == "success", result["log"][-3000:]
    assert states(result).items() >= {"approval": "success", "promote": "skipped", "reject": "success"}.items()
    tags = _tags(stack, name)
    assert alias(stack["client"], name, "champion") is None
    assert tags["decision"] == "rejected" and tags["approval.by"] == "bob"
    assert "rejected by bob in review: misses small consolidations on our films" in tags["decision_reason"]


def test_no_answer_times_out_and_rejects(stack):
    env, name = _env(stack, "timeout", "promotion.approval=required", "promotion.approval_timeout_hours=0.001")
    run = Background(env)
    stack["api"].pending("alice", "xray_retrain")
    time.sleep(4)                       # 0.001 h = 3.6 s without an answer
    sweep_timeouts(env)                 # the scheduler's sweep: Airflow answers the default, Reject
    result = run.join()
    assert result["state"] == "success", result["log"][-3000:]
    assert states(result).items() >= {"approval": "success", "promote": "skipped", "reject": "success"}.items()
    tags = _tags(stack, name)
    assert tags["decision"] == "rejected" and "approval.by" not in tags
    assert "no reviewer answered within 0.001 h" in tags["decision_reason"]
    assert alias(stack["client"], name, "champion") is None


def test_shadow_wait_passes_when_enough_cases(stack):
    stack["shadow"].write_text(json.dumps({"answered": 3, "days": 0.5}))
    env, name = _env(stack, "shadow", "promotion.approval=auto", "promotion.shadow.min_cases=40",
                     "promotion.shadow.check_minutes=0.02", "promotion.shadow.max_days=1")
    run = Background(env)
    _wait_tag(stack, name, "decision", "pending_shadow")
    time.sleep(5)                       # a few looks at 3 answered cases: still waiting
    assert alias(stack["client"], name, "champion") is None
    stack["shadow"].write_text(json.dumps({"answered": 41, "days": 0.6, "agreement": 0.93}))
    result = run.join()
    assert result["state"] == "success", result["log"][-3000:]
    assert states(result).items() >= {"shadow": "success", "approval": "skipped", "promote": "success"}.items()
    assert result["xcom"]["shadow"]["answered"] == 41
    assert alias(stack["client"], name, "champion") == _tags(stack, name)["version"]
    looks = Path(f"{stack['shadow']}.calls").read_text().splitlines()
    assert len(looks) >= 3 and json.loads(looks[-1])["model_name"] == name


def test_shadow_max_days_rejects(stack):
    stack["shadow"].write_text(json.dumps({"answered": 2, "days": 0.0001}))
    env, name = _env(stack, "expire", "promotion.approval=required", "promotion.shadow.min_cases=40",
                     "promotion.shadow.check_minutes=0.02", "promotion.shadow.max_days=0.0001")  # 8.6 s
    result = run_dag(env, CONF, timeout=1500)
    assert result["state"] == "success", result["log"][-3000:]
    assert states(result).items() >= {"shadow": "skipped", "approval": "skipped", "verdict": "success",
                                       "promote": "skipped", "reject": "success"}.items()
    tags = _tags(stack, name)
    assert tags["decision"] == "rejected" and alias(stack["client"], name, "champion") is None
    assert "not enough shadow evidence after 0.0001 days" in tags["decision_reason"]
    assert "2 of 40 live cases answered" in tags["decision_reason"]
