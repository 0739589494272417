"""`make run QUICK=1` end to end, for real, in a temporary copy of the repository.

scripts/stack.py up (quick mode: ~200 real images, one epoch at 64 px) imports the data into DVC,
starts MLflow, Airflow (api-server, scheduler, dag-processor on SQLite) and triggers one run of the
retraining DAG, then starts the web site under gunicorn. Checked:
- MLflow answers; the DAG run succeeded; the registry has a champion;
- the web site's /healthz serves that champion version;
- a second `up` is safe: nothing restarted, no second training;
- `scripts/stack.py down` leaves no process behind.

The copy (tracked + untracked-but-not-ignored files of the working tree, the venv symlinked) and
free ports keep /work/main and other people's servers untouched. About 3-6 minutes on 2 cores.
Run alone:  .venv/bin/python -m pytest tests/deploy/test_stack_e2e.py -m slow
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
PER_CLASS = int(os.environ.get("STACK_TEST_PER_CLASS", "100"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # CI budget: < 8 min (measured: see docs/benchmarks.md)

NEEDED = ["scripts/stack.py", "scripts/stack_airflow.py", "scripts/mlflow_server.sh", "scripts/import_data.sh",
          "scripts/web_server.sh", "dags/retrain_xray.py", "django_app/manage.py", "pipeline/mlops/aliases.py"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python(root: Path) -> str:
    """The venv's interpreter, through the copy's .venv link (as `make run` calls it)."""
    return str(root / ".venv/bin/python")


def copy_working_tree(dest: Path) -> None:
    """Tracked files and untracked files git does not ignore, as they are now (uncommitted edits
    included); then a fresh git repository there, so DVC and import_data.sh can commit."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    (dest / ".venv").symlink_to(REPO / ".venv")
    git = ["git", "-C", str(dest), "-c", "user.name=stack-test", "-c", "user.email=stack-test@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (dest / ".git" / "info" / "exclude").write_text(".venv\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "copy of the working tree"], check=True)


def processes_of(root: Path) -> dict[int, str]:
    """Live processes working in, or started from, the copy (cwd or command line under it)."""
    found = {}
    needle = str(root)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(proc / "cwd")
            except OSError:
                cwd = ""
            state = next((l for l in (proc / "status").read_text().splitlines() if l.startswith("State:")), "")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if "zombie" in state:
            continue
        if needle in cmdline or cwd.startswith(needle):
            found[int(proc.name)] = cmdline[:200]
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory, shared_datasets):
    missing = [p for p in NEEDED if not (REPO / p).exists()]
    if missing:
        pytest.skip(f"the local stack needs {', '.join(missing)} (not in this checkout yet)")
    root = tmp_path_factory.mktemp("stack") / "repo"
    root.mkdir()
    copy_working_tree(root)
    # every port its own (the local PACS's too): a `make run` on the same machine keeps its defaults
    ports = {"MLFLOW_PORT": free_port(), "AIRFLOW_PORT": free_port(), "WEB_PORT": free_port(),
             "PACS_HTTP_PORT": free_port(), "PACS_DICOM_PORT": free_port()}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "AIRFLOW", "DJANGO_", "XRAY_DVC", "XRAY_REPO", "WEB_"))}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({"QUICK": "1", "QUICK_PER_CLASS": str(PER_CLASS), "DATA": str(shared_datasets / "chest_xray"),
                "STACK_DAG_TIMEOUT_S": "420", "STACK_WEB_WORKERS": "1", "XRAY_CHAMPION_CHECK_SECONDS": "5"})
    log = root.parent / "stack-up.log"

    def up(label: str) -> tuple[subprocess.CompletedProcess, float]:
        started = time.monotonic()
        with open(log, "a") as out:
            out.write(f"\n===== {label}\n")
            out.flush()
            proc = subprocess.run([python(root), "scripts/stack.py", "up"], cwd=root, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=540)
        return proc, time.monotonic() - started

    info = {"root": root, "env": env, "ports": ports, "log": log, "up": up}
    try:
        info["first"] = up("first up")
        yield info
    finally:
        subprocess.run([python(root), "scripts/stack.py", "down"], cwd=root, env=env, capture_output=True, timeout=180)
        for pid in processes_of(root):  # only ours: they run in the temporary copy
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        print(f"stack log: {log}")


def read_log(stack) -> str:
    return stack["log"].read_text()[-6000:]


def test_quick_stack_end_to_end(stack):
    proc, seconds = stack["first"]
    assert proc.returncode == 0, f"stack.py up failed:\n{read_log(stack)}"
    root, ports = stack["root"], stack["ports"]

    # MLflow is up
    mlflow_uri = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    assert requests.get(f"{mlflow_uri}/health", timeout=10).status_code == 200

    # the DAG run succeeded (asked to Airflow's REST API, not read from the log)
    env = {**stack["env"], "AIRFLOW_URL": f"http://127.0.0.1:{ports['AIRFLOW_PORT']}",
           "AIRFLOW_PASSWORD": (root / ".local/secrets/airflow_password").read_text().strip()}
    last = subprocess.run([str(root / ".venv/bin/python"), "scripts/stack_airflow.py", "last"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=60)
    assert last.returncode == 0 and last.stdout.split()[-1] == "success", last.stdout + last.stderr

    # a champion is registered
    from mlflow import MlflowClient

    from pipeline.settings import config

    name = os.environ.get("XRAY_MODEL_NAME") or config.load_params().registry.model_name
    champion = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri).get_model_version_by_alias(name, "champion")

    # the web site serves that version
    deadline = time.time() + 120  # `up` waits for the model too; allow a slow worker a little more
    while True:
        health = requests.get(f"http://127.0.0.1:{ports['WEB_PORT']}/healthz", timeout=60).json()
        if health["champion_loaded"] or time.time() > deadline:
            break
        time.sleep(2)
    assert health["champion_loaded"], health
    assert str(health["champion"]["version"]) == str(champion.version), health

    # the doctor can log in with what `up` printed
    text = read_log(stack)
    assert f"http://127.0.0.1:{ports['WEB_PORT']}/" in text and "login: doctor /" in text
    print(f"first `up` took {seconds:.0f}s; champion v{champion.version}")

    # idempotent: a second `up` restarts nothing and trains nothing
    pids = {p.name: p.read_text().strip() for p in (root / ".local/pids").glob("*.pid")}
    proc, seconds2 = stack["up"]("second up")
    assert proc.returncode == 0, read_log(stack)
    assert {p.name: p.read_text().strip() for p in (root / ".local/pids").glob("*.pid")} == pids
    text = read_log(stack).split("===== second up")[-1]
    assert "already succeeded" in text and "triggered" not in text, text
    assert MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri).get_model_version_by_alias(name, "champion").version == \
        champion.version
    print(f"second `up` took {seconds2:.0f}s")

    # down leaves nothing behind
    assert processes_of(root), "the stack's processes should be visible before `down`"
    proc = subprocess.run([python(root), "scripts/stack.py", "down"], cwd=root, env=stack["env"], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    time.sleep(1)
    left = processes_of(root)
    assert not left, f"processes left after down: {json.dumps(left, indent=1)}"
    for port in ports.values():
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after down"
