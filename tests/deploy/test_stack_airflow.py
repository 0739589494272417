"""scripts/stack_airflow.py (how `make run` drives Airflow) against a stand-in of Airflow 3's REST API.

Fast checks of the decisions the end-to-end test cannot reach cheaply: trigger a run when there is
none, wait for the run already in flight instead of starting a second one, do not repeat a run that
succeeded (unless STACK_RETRAIN=1), report failed tasks, unpause a paused DAG, log in again when
the token expires, and report a DAG folder that does not import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "stack_airflow.py"
TASKS = ["detect", "validate", "train", "evaluate", "decide", "promote", "reject", "notify"]


class FakeAirflow:
    """Just enough of /auth/token and /api/v2 for stack_airflow.py; runs finish after N polls."""

    def __init__(self):
        self.runs: list[dict] = []
        self.paused = True
        self.parsed = True
        self.import_errors: list[dict] = []
        self.polls_to_finish = 2
        self.final_state = "success"
        self.requests: list[tuple[str, str, dict | None]] = []
        self.expire_next_token = False
        self.tokens_issued = 0

    def handle(self, method: str, path: str, body: dict | None, auth: str | None):
        self.requests.append((method, path, body))
        url = urlparse(path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if url.path == "/auth/token":
            if body.get("password") != "pw":
                return 401, {"detail": "bad login"}
            self.tokens_issued += 1
            return 201, {"access_token": f"token-{self.tokens_issued}"}
        if auth != f"Bearer token-{self.tokens_issued}" or self.expire_next_token:
            self.expire_next_token = False
            return 401, {"detail": "token expired"}
        if parts[:2] != ["api", "v2"]:
            return 404, {}
        rest = parts[2:]
        if rest == ["importErrors"]:
            return 200, {"import_errors": self.import_errors}
        if rest[:2] == ["dags", "xray_retrain"] and len(rest) == 2:
            if not self.parsed:
                return 404, {"detail": "not found"}
            if method == "PATCH":
                self.paused = body["is_paused"]
            return 200, {"dag_id": "xray_retrain", "is_paused": self.paused}
        if rest[2:3] == ["dagRuns"] and len(rest) == 3:
            if method == "POST":
                run = {"dag_run_id": body["dag_run_id"], "state": "queued", "conf": body["conf"], "polls": 0}
                self.runs.append(run)
                return 200, run
            return 200, {"dag_runs": self.runs[-1:]}
        if rest[2:3] == ["dagRuns"] and len(rest) >= 4:
            run = next(r for r in self.runs if r["dag_run_id"] == rest[3])
            if len(rest) == 4:
                run["polls"] += 1
                if run["state"] in ("queued", "running"):
                    run["state"] = self.final_state if run["polls"] > self.polls_to_finish else "running"
                return 200, run
            done = run["state"] in ("success", "failed")
            state = {"success": "success", "failed": "failed"}.get(run["state"], "running")
            tis = [{"task_id": t, "state": (state if done else ("success" if i == 0 else None))}
                   for i, t in enumerate(TASKS)]
            return 200, {"task_instances": tis}
        return 404, {"detail": path}


@pytest.fixture
def fake():
    state = FakeAirflow()

    class Handler(BaseHTTPRequestHandler):
        def _go(self, method):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload = state.handle(method, self.path, body, self.headers.get("Authorization"))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._go("GET")

        def do_POST(self):  # noqa: N802
            self._go("POST")

        def do_PATCH(self):  # noqa: N802
            self._go("PATCH")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()


def run(fake, *args, **env) -> subprocess.CompletedProcess:
    full_env = {"PATH": os.environ["PATH"], "AIRFLOW_URL": fake.url, "AIRFLOW_USER": "admin",
                "AIRFLOW_PASSWORD": "pw", "XRAY_DAG_ID": "xray_retrain", "STACK_POLL_S": "0.05", **env}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env=full_env)


def test_triggers_one_run_with_conf_and_waits_for_success(fake):
    conf = {"force": True, "overrides": ["train.epochs=1"]}
    proc = run(fake, "run", STACK_DAG_CONF=json.dumps(conf))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not fake.paused, "the DAG must be unpaused or the run never starts"
    assert len(fake.runs) == 1 and fake.runs[0]["conf"] == conf
    posted = next(b for m, p, b in fake.requests if m == "POST" and p.endswith("/dagRuns"))
    assert posted["logical_date"], "a manual run gets a logical date, as from the UI"
    assert "succeeded" in proc.stdout
    assert "train=ok" in proc.stdout  # the progress lines name each task's state


def test_waits_for_the_run_in_flight_instead_of_starting_another(fake):
    fake.runs.append({"dag_run_id": "scheduled__x", "state": "running", "conf": {}, "polls": 0})
    proc = run(fake, "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(fake.runs) == 1 and "already in flight" in proc.stdout


def test_a_succeeded_run_is_not_repeated_unless_asked(fake):
    fake.runs.append({"dag_run_id": "stack__1", "state": "success", "conf": {}, "polls": 0})
    proc = run(fake, "run")
    assert proc.returncode == 0 and len(fake.runs) == 1 and "already succeeded" in proc.stdout
    proc = run(fake, "run", STACK_RETRAIN="1")
    assert proc.returncode == 0 and len(fake.runs) == 2


def test_a_failed_run_fails_and_names_the_tasks(fake):
    fake.final_state = "failed"
    proc = run(fake, "run")
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "train" in proc.stdout and "logs" in proc.stdout


def test_expired_token_logs_in_again(fake):
    fake.runs.append({"dag_run_id": "stack__1", "state": "success", "conf": {}, "polls": 0})
    run(fake, "last")
    fake.expire_next_token = True
    proc = run(fake, "last")
    assert proc.returncode == 0 and proc.stdout.strip() == "stack__1 success"


def test_dag_import_error_is_reported(fake):
    fake.parsed = False
    fake.import_errors = [{"filename": "dags/retrain_xray.py", "stack_trace": "SyntaxError: boom"}]
    proc = run(fake, "run")
    assert proc.returncode != 0 and "SyntaxError: boom" in proc.stdout + proc.stderr


def test_unparsed_dag_times_out_with_a_message(fake):
    fake.parsed = False
    proc = run(fake, "run", STACK_PARSE_TIMEOUT_S="0")
    assert proc.returncode != 0 and "not parsed" in proc.stderr


def test_wrong_password_and_unreachable_server(fake):
    proc = run(fake, "last", AIRFLOW_PASSWORD="nope")
    assert proc.returncode != 0
    proc = run(fake, "last", AIRFLOW_URL="http://127.0.0.1:9")
    assert proc.returncode == 1 and "unreachable" in proc.stderr


def test_training_progress_from_the_train_task_log(tmp_path, monkeypatch):
    """`make run` shows each epoch of the train task (read from its log) with an ETA."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("stack_airflow", SCRIPT)
    stack_airflow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stack_airflow)

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    folder = tmp_path / "logs" / "dag_id=xray_retrain" / "run_id=r1" / "task_id=train"
    assert stack_airflow.training_progress("r1") is None   # no log yet
    folder.mkdir(parents=True)
    line = '{"level":"info","event":"epoch %d/14: train_loss 0.1  val_loss 0.1  val_auc %s  95.0 img/s  40s"}\n'
    (folder / "attempt=1.log").write_text('{"event":"preparing data"}\n')
    assert stack_airflow.training_progress("r1") is None   # started, no epoch finished
    (folder / "attempt=1.log").write_text(line % (1, "0.9712") + line % (5, "0.9948"))
    assert stack_airflow.training_progress("r1") == (
        "epoch 5/14, val AUC 0.9948, 40 s/epoch, about 6 min to go (at most; early stopping may end sooner)")
