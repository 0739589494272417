#!/usr/bin/env python3
"""Drive the local stack's Airflow through its REST API (used by scripts/stack.py and scripts/stack_test.sh).

    stack_airflow.py run     trigger one run of the DAG (or attach to the one in flight) and wait
                             for it, printing each task's state as it changes; exit 0 on success
    stack_airflow.py last    print the state of the newest run ("none" when there is none)

Standard library only (runs before anything else is imported, and fast). Settings come from the
environment scripts/stack.py sets:
  AIRFLOW_URL (http://127.0.0.1:8080)  AIRFLOW_USER / AIRFLOW_PASSWORD (SimpleAuthManager login)
  XRAY_DAG_ID (xray_retrain)           STACK_DAG_CONF (JSON conf of the run, default {})
  STACK_DAG_TIMEOUT_S (3600)           STACK_PARSE_TIMEOUT_S (180): wait for the DAG to be parsed
  STACK_RETRAIN (0): 1 triggers a new run even when the newest run already succeeded
  STACK_POLL_S (5): seconds between two looks at the run
"""
from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

URL = os.environ.get("AIRFLOW_URL", "http://127.0.0.1:8080").rstrip("/")
DAG_ID = os.environ.get("XRAY_DAG_ID", "xray_retrain")
FINISHED = {"success", "failed"}
POLL_S = float(os.environ.get("STACK_POLL_S", "5"))
# how each task state is shown in the progress line
MARK = {"success": "ok", "failed": "FAILED", "upstream_failed": "upstream-failed", "skipped": "skipped",
        "running": "running", "queued": "queued", "scheduled": "scheduled", "up_for_retry": "retrying",
        "deferred": "deferred", "restarting": "restarting", "up_for_reschedule": "waiting (shadow)",
        "awaiting_input": "AWAITING A REVIEWER (Airflow UI: Browse > Required Actions)", None: "-"}


class Api:
    def __init__(self) -> None:
        self.token: str | None = None

    def login(self) -> None:
        body = json.dumps({"username": os.environ.get("AIRFLOW_USER", "admin"),
                           "password": os.environ["AIRFLOW_PASSWORD"]}).encode()
        req = urllib.request.Request(f"{URL}/auth/token", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                self.token = json.load(resp)["access_token"]
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"stack: Airflow refused the login of '{os.environ.get('AIRFLOW_USER', 'admin')}' "
                             f"(HTTP {exc.code}); the password is AIRFLOW_ADMIN_PASSWORD or "
                             f".local/secrets/airflow_password") from None

    def call(self, method: str, path: str, payload: dict | None = None, retry_auth: bool = True):
        if self.token is None:
            self.login()
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(f"{URL}/api/v2{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and retry_auth:  # token expired: log in again, once
                self.token = None
                return self.call(method, path, payload, retry_auth=False)
            detail = exc.read().decode(errors="replace")[:500]
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail}") from None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for_dag(api: Api) -> dict:
    deadline = time.monotonic() + float(os.environ.get("STACK_PARSE_TIMEOUT_S", "180"))
    while True:
        try:
            return api.call("GET", f"/dags/{DAG_ID}")
        except RuntimeError as exc:
            if "HTTP 404" not in str(exc):
                raise
        errors = api.call("GET", "/importErrors")
        for err in errors.get("import_errors", []):
            log(f"DAG import error in {err.get('filename')}:\n{err.get('stack_trace', '')[-2000:]}")
            raise SystemExit("stack: the DAG folder does not import (see above)")
        if time.monotonic() > deadline:
            raise SystemExit(f"stack: DAG '{DAG_ID}' not parsed after "
                             f"{os.environ.get('STACK_PARSE_TIMEOUT_S', '180')}s (see the dag-processor log)")
        time.sleep(min(3.0, POLL_S))


def newest_run(api: Api) -> dict | None:
    runs = api.call("GET", f"/dags/{DAG_ID}/dagRuns?order_by=-run_after&limit=1").get("dag_runs", [])
    return runs[0] if runs else None


def task_states(api: Api, run_id: str) -> list[tuple[str, str | None]]:
    rid = urllib.parse.quote(run_id, safe="")
    tis = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{rid}/taskInstances?limit=100").get("task_instances", [])
    order = {t: i for i, t in enumerate(["detect", "validate", "train", "evaluate", "decide", "shadow",
                                         "approval", "verdict", "promote", "reject", "notify"])}
    tis.sort(key=lambda ti: (order.get(ti["task_id"], 99), ti["task_id"]))
    return [(ti["task_id"], ti.get("state")) for ti in tis]


EPOCH = re.compile(r"epoch (\d+)/(\d+): .*?val_auc ([0-9.]+).*?\s(\d+)s\b")


def training_progress(run_id: str) -> str | None:
    """The train task's newest epoch line (its log, under $AIRFLOW_HOME/logs) with an ETA, e.g.
    "epoch 5/14, val AUC 0.9948, 40 s/epoch, about 6 min to go"; None before the first epoch."""
    folder = Path(os.environ.get("AIRFLOW_HOME", ".airflow")) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" \
        / "task_id=train"
    logs = sorted(folder.glob("attempt=*.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return None
    found = EPOCH.findall(logs[-1].read_text(errors="replace"))
    if not found:
        return None
    epoch, total, auc, seconds = found[-1]
    left = (int(total) - int(epoch)) * int(seconds) / 60
    return (f"epoch {epoch}/{total}, val AUC {float(auc):.4f}, {seconds} s/epoch, "
            f"about {left:.0f} min to go (at most; early stopping may end sooner)")


def cmd_run(api: Api) -> int:
    dag = wait_for_dag(api)
    if dag.get("is_paused"):
        api.call("PATCH", f"/dags/{DAG_ID}?update_mask=is_paused", {"is_paused": False})
        log(f"unpaused DAG {DAG_ID}")
    run = newest_run(api)
    retrain = os.environ.get("STACK_RETRAIN", "0") == "1"
    if run and run["state"] in ("queued", "running"):
        log(f"a run is already in flight: {run['dag_run_id']} ({run['state']}): waiting for it")
    elif run and run["state"] == "success" and not retrain:
        log(f"the newest run {run['dag_run_id']} already succeeded (STACK_RETRAIN=1 triggers another)")
        return 0
    else:
        conf = json.loads(os.environ.get("STACK_DAG_CONF") or "{}")
        run_id = f"stack__{time.strftime('%Y%m%dT%H%M%S')}"
        # a logical date (now), as the UI's trigger form gives one: tasks may use {{ ds }}
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        run = api.call("POST", f"/dags/{DAG_ID}/dagRuns",
                       {"dag_run_id": run_id, "logical_date": now, "conf": conf,
                        "note": "triggered by scripts/stack.py (make run)"})
        log(f"triggered {DAG_ID} run {run['dag_run_id']} with conf {json.dumps(conf)}")

    run_id = run["dag_run_id"]
    rid = urllib.parse.quote(run_id, safe="")
    deadline = time.monotonic() + float(os.environ.get("STACK_DAG_TIMEOUT_S", "3600"))
    started = time.monotonic()
    last = last_progress = None
    while True:
        run = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{rid}")
        states = task_states(api, run_id)
        line = "  ".join(f"{t}={MARK.get(s, s)}" for t, s in states) or "(no task yet)"
        if line != last:
            log(f"{run['state']:>8} {int(time.monotonic() - started):>4}s  {line}")
            last = line
        progress = training_progress(run_id) if dict(states).get("train") == "running" else None
        if progress and progress != last_progress:
            log(f"         train: {progress}")
            last_progress = progress
        if run["state"] in FINISHED:
            break
        if time.monotonic() > deadline:
            log(f"run {run_id} still {run['state']} after {os.environ.get('STACK_DAG_TIMEOUT_S', '3600')}s")
            return 1
        time.sleep(POLL_S)
    failed = [t for t, s in states if s in ("failed", "upstream_failed")]
    if run["state"] != "success":
        log(f"run {run_id} FAILED (tasks: {', '.join(failed) or '?'}); task logs: Airflow UI > {DAG_ID} > "
            f"{run_id}, or .airflow/logs/dag_id={DAG_ID}/run_id={run_id}/")
        return 1
    log(f"run {run_id} succeeded in {int(time.monotonic() - started)}s")
    return 0


def cmd_last(api: Api) -> int:
    run = newest_run(api)
    print(f"{run['dag_run_id']} {run['state']}" if run else "none")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("run", "last"):
        print(__doc__, file=sys.stderr)
        return 2
    api = Api()
    try:
        return cmd_run(api) if argv[0] == "run" else cmd_last(api)
    except (urllib.error.URLError, ConnectionError) as exc:
        print(f"stack: Airflow API at {URL} unreachable: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
