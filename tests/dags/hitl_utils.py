"""A real Airflow api-server beside `dag.test()`, for the human-in-the-loop tests: a reviewer logs in
(SimpleAuthManager) and answers the approval task through the REST API the UI uses; and the
scheduler's timeout sweep of tasks awaiting input (what `airflow scheduler` runs every
trigger_timeout_check_interval), run in its own process on the same metadata database."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import requests

from dagtest_utils import VENV_BIN

SWEEP = """
from airflow.jobs.job import Job
from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()
"""


class ApiServer:
    """`airflow api-server` on a free port, with reviewer accounts (name: password)."""

    def __init__(self, env: dict, home: Path, users: dict[str, str]):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps(users))
        self.env = {**env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:admin" for u in users),
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)}
        self.url, self.users = f"http://127.0.0.1:{port}", users
        self.log = open(home / "api-server.log", "w")
        self.proc = subprocess.Popen([str(VENV_BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port",
                                      str(port), "--workers", "1"], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline:
            assert self.proc.poll() is None, (home / "api-server.log").read_text()[-3000:]
            try:
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=3).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise TimeoutError((home / "api-server.log").read_text()[-3000:])

    def token(self, user: str) -> dict:
        reply = requests.post(f"{self.url}/auth/token", json={"username": user, "password": self.users[user]},
                              timeout=30)
        reply.raise_for_status()
        return {"Authorization": f"Bearer {reply.json()['access_token']}"}

    def pending(self, user: str, dag_id: str, timeout: float = 1500) -> dict:
        """The first unanswered human-in-the-loop request of dag_id, as the Required Actions page lists it."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            reply = requests.get(f"{self.url}/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails",
                                 params={"response_received": "false"}, headers=self.token(user), timeout=30)
            reply.raise_for_status()
            waiting = reply.json()["hitl_details"]
            if waiting:
                return waiting[0]
            time.sleep(2)
        raise TimeoutError(f"no approval task of {dag_id} waited for input within {timeout:.0f}s")

    def respond(self, user: str, detail: dict, option: str, comment: str) -> requests.Response:
        """What the UI's Approve / Reject buttons send."""
        ti = detail["task_instance"]
        return requests.patch(f"{self.url}/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                              f"{ti['task_id']}/{ti['map_index']}/hitlDetails", headers=self.token(user),
                              json={"chosen_options": [option], "params_input": {"comment": comment}}, timeout=30)

    def stop(self) -> None:
        import os
        import signal

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def sweep_timeouts(env: dict) -> None:
    """One pass of the scheduler's sweep of human-in-the-loop tasks past their response timeout."""
    proc = subprocess.run([sys.executable, "-c", SWEEP], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
