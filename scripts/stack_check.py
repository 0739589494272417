#!/usr/bin/env python3
"""Checks of the running compose stack, called by scripts/stack_test.sh (standard library only;
every request goes to a port compose publishes on 127.0.0.1).

  stack_check.py champion   wait until the site (through the nginx proxy) serves a champion;
                            print its version
  stack_check.py predict    upload a real X-ray to /api/predict with a doctor's API token; the
                            answer must name the champion's version
  stack_check.py mlflow     MLflow lists the DAG's run and the champion; anonymous calls get 401;
                            the web app's reader login cannot move the champion alias (403)
  stack_check.py worker     the training task ran on a Celery worker container (queue `training`)
  stack_check.py body       a body over the proxy's limit gets 413 from nginx
Environment: WEB_URL MLFLOW_URL AIRFLOW_URL, API_TOKEN, IMAGE (a file to upload), MODEL_NAME,
MLFLOW_ADMIN_USER/_PASSWORD, MLFLOW_READER_USER/_PASSWORD, AIRFLOW_USER/_PASSWORD,
WORKER_HOSTNAMES (comma list), EXPECT_VERSION (champion: must be this one).
"""
from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

E = os.environ


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout=60):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def champion() -> int:
    deadline = time.monotonic() + float(E.get("CHAMPION_WAIT_S", "300"))
    while True:
        status, body = http("GET", f"{E['WEB_URL']}/healthz?ready=1", timeout=10)
        if status == 200:
            health = json.loads(body)
            version = str((health.get("champion") or {}).get("version"))
            if E.get("EXPECT_VERSION") and version != E["EXPECT_VERSION"]:
                sys.exit(f"stack_check: the site serves v{version}, expected v{E['EXPECT_VERSION']}")
            print(version)
            return 0
        if time.monotonic() > deadline:
            sys.exit(f"stack_check: no champion served after the wait: HTTP {status} {body[:300]!r}")
        time.sleep(3)


def predict() -> int:
    data = open(E["IMAGE"], "rb").read()
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"xray.jpeg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    status, out = http("POST", f"{E['WEB_URL']}/api/predict", body, {
        "Authorization": f"Token {E['API_TOKEN']}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    if status != 200:
        sys.exit(f"stack_check: /api/predict answered {status}: {out[:500]!r}")
    answer = json.loads(out)
    version = str(answer.get("model_version") or (answer.get("model") or {}).get("version"))
    if version != E["EXPECT_VERSION"]:
        sys.exit(f"stack_check: the prediction names model v{version}, the champion is v{E['EXPECT_VERSION']}: {answer}")
    print(json.dumps({k: answer.get(k) for k in ("label", "probability", "model_version") if k in answer}))
    return 0


def mlflow() -> int:
    url, name = E["MLFLOW_URL"], E["MODEL_NAME"]
    admin = basic(E["MLFLOW_ADMIN_USER"], E["MLFLOW_ADMIN_PASSWORD"])
    status, _ = http("GET", f"{url}/api/2.0/mlflow/experiments/search?max_results=10")
    assert status == 401, f"anonymous MLflow call answered {status}, not 401"
    status, out = http("GET", f"{url}/api/2.0/mlflow/registered-models/alias?name={urllib.parse.quote(name)}&alias=champion",
                       headers=admin)
    assert status == 200, (status, out[:300])
    version = json.loads(out)["model_version"]
    run_id = version["run_id"]
    status, out = http("GET", f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}", headers=admin)
    assert status == 200, (status, out[:300])
    run = json.loads(out)["run"]
    assert run["info"]["status"] == "FINISHED", run["info"]
    # the reader (web) cannot move the alias: only the trainer that owns the model can
    reader = basic(E["MLFLOW_READER_USER"], E["MLFLOW_READER_PASSWORD"])
    status, out = http("POST", f"{url}/api/2.0/mlflow/registered-models/alias",
                       json.dumps({"name": name, "alias": "champion", "version": version["version"]}).encode(),
                       {**reader, "Content-Type": "application/json"})
    assert status == 403, f"the web login moved the alias? HTTP {status} {out[:200]!r}"
    status, _ = http("GET", f"{url}/", headers=admin)
    assert status == 200, f"MLflow UI answered {status}"
    print(f"run {run_id} FINISHED, champion v{version['version']}")
    return 0


def worker() -> int:
    url = E["AIRFLOW_URL"]
    status, out = http("POST", f"{url}/auth/token", json.dumps({"username": E["AIRFLOW_USER"],
                       "password": E["AIRFLOW_PASSWORD"]}).encode(), {"Content-Type": "application/json"})
    assert status in (200, 201), (status, out[:200])
    auth = {"Authorization": f"Bearer {json.loads(out)['access_token']}"}
    dag = E.get("XRAY_DAG_ID", "xray_retrain")
    status, out = http("GET", f"{url}/api/v2/dags/{dag}/dagRuns?order_by=-start_date&limit=1", headers=auth)
    run = json.loads(out)["dag_runs"][0]
    rid = urllib.parse.quote(run["dag_run_id"], safe="")
    status, out = http("GET", f"{url}/api/v2/dags/{dag}/dagRuns/{rid}/taskInstances", headers=auth)
    tis = json.loads(out)["task_instances"]
    train = [t for t in tis if t.get("queue") == "training"]
    assert train, f"no task on the training queue: {[(t['task_id'], t.get('queue')) for t in tis]}"
    workers = set(E["WORKER_HOSTNAMES"].split(","))
    for t in train:
        assert t["state"] == "success", t
        assert t.get("hostname") in workers, f"{t['task_id']} ran on {t.get('hostname')}, not a worker {workers}"
        print(f"{t['task_id']}: queue {t['queue']}, worker {t['hostname']}, {t.get('duration') or 0:.0f}s")
    return 0


def body() -> int:
    big = int(E.get("BODY_BYTES", str(600 * 1024 * 1024)))
    # declare a huge body, send a little: nginx answers 413 from the header alone
    import http.client
    u = urllib.parse.urlsplit(E["WEB_URL"])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("POST", "/api/predict")
    conn.putheader("Content-Length", str(big))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders()
    try:
        conn.send(b"x" * 1024)
    except OSError:
        pass
    status = conn.getresponse().status
    assert status == 413, f"over-limit body answered {status}, not 413"
    print("413 from the proxy")
    return 0


if __name__ == "__main__":
    sys.exit({"champion": champion, "predict": predict, "mlflow": mlflow, "worker": worker, "body": body}[sys.argv[1]]())
