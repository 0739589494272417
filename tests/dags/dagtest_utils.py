"""Helpers for the data-versioning and DAG tests: a throw-away git + DVC world, Airflow homes,
a webhook receiver, and a runner for real `dag.test()` runs in a subprocess (fixtures: conftest.py).

Nothing here touches /work/main's own git history or DVC remote: every repository, remote and
Airflow database lives under pytest's tmp directory (PostgreSQL: a fresh database, dropped after).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
IMPORT_SCRIPT = REPO / "scripts" / "import_data.sh"
RUN_DAG = REPO / "tests" / "dags" / "run_dag.py"

# Tiny training (the lead's TINY settings): what a DAG run's `overrides` may set.
TINY_OVERRIDES = ["preprocess.image_size=64", "train.epochs=1", "train.batch_size=16",
                  "train.warmup_epochs=0", "train.patience=1"]
# Data gates and floors a 1-epoch 64 px model passes while an untrained one (train.epochs=0,
# AUC ~0.55 on this subset) does not. A DAG run cannot override these (the policy is not a run
# option): they go into the params file the DAG reads ($XRAY_PARAMS), see policy_params().
# The stress set: 2 of the 14 shift families (4 shifts instead of 28): every stress step of the DAG
# (calibration, scores, stress floors, fast-path check, evidence) still runs, at a seventh of the
# forward passes; the shifts themselves are tested in tests/model.
TINY_POLICY = ["data.min_side=32", "promotion.floors.auc=0.65", "promotion.floors.sensitivity=0.5",
               "promotion.floors.specificity=0.0", "promotion.stress_floors.auc=0.5",
               "promotion.stress_floors.sensitivity=0.3", "promotion.stress_floors.specificity=0.0",
               "evaluate.stress_images=24", "evaluate.stress_families=[gamma, jpeg]"]


def policy_params(path: Path, *extra: str) -> str:
    """Write params.yaml + TINY_POLICY (+ extra) to `path`; returns it, for XRAY_PARAMS."""
    import yaml

    from pipeline.settings import config

    params = config.load_params(REPO / "params.yaml", TINY_POLICY + list(extra)).to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(path)


def shared_root() -> Path:
    return Path(os.environ.get("SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def sh(cmd: list[str] | str, cwd: Path | None = None, env: dict | None = None, check: bool = True,
       timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(cmd, str))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def base_env(**extra: str) -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_TERMINAL_PROMPT="0",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update({k: str(v) for k, v in extra.items()})
    return env


class DataWorld:
    """origin.git (the team's git server), a DVC remote folder, the data engineer's clone and the
    Airflow worker's clone (XRAY_REPO), plus a source folder of real X-rays (symlinks)."""

    def __init__(self, root: Path):
        self.root = root
        self.origin, self.remote = root / "origin.git", root / "dvc-remote"
        self.engineer, self.workspace, self.src = root / "engineer", root / "workspace", root / "src"
        sh(["git", "init", "-q", "--bare", str(self.origin)])
        sh(["git", "clone", "-q", str(self.origin), str(self.engineer)])
        dvc = [sys.executable, "-m", "dvc"]
        env = base_env()
        sh(dvc + ["init", "-q"], cwd=self.engineer, env=env)
        sh(dvc + ["config", "core.analytics", "false"], cwd=self.engineer, env=env)
        sh(dvc + ["remote", "add", "-d", "local", str(self.remote)], cwd=self.engineer, env=env)
        sh("git add -A && git commit -qm 'dvc init' && git push -q origin HEAD", cwd=self.engineer)
        sh(["git", "clone", "-q", str(self.origin), str(self.workspace)])

    def add_images(self, n_per_class: int, seed: int, split: str = "train") -> int:
        """Symlink about n real images per class (whole patients, seeded) into src/; returns how many are new."""
        from pipeline.data import dataset

        return len(dataset.link_subset(shared_root() / "chest_xray" / "train", self.src, n_per_class, seed, split))

    def publish(self, **env: str) -> subprocess.CompletedProcess:
        """What a data engineer runs: `make data DATA=<src>` (scripts/import_data.sh)."""
        return sh([str(IMPORT_SCRIPT), str(self.src)], cwd=REPO, env=base_env(XRAY_REPO=str(self.engineer), **env))

    def pointer_hash(self, repo: Path | None = None) -> str:
        from pipeline.data import versioning

        return versioning.data_version(repo or self.engineer).hash

    def git_log(self, repo: Path | None = None) -> list[str]:
        out = sh(["git", "log", "--format=%s"], cwd=repo or self.engineer).stdout
        return out.strip().splitlines()



class Webhook:
    """A chat service's incoming webhook: receives what apprise's `json://` sends ({"title", "message",
    "type"}) through the `xray_apprise` connection (`connection`: the AIRFLOW_CONN_XRAY_APPRISE value)."""

    def __init__(self):
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.connection = json.dumps({"conn_type": "apprise",
                                      "extra": {"config": {"path": f"json://127.0.0.1:{self.port}/hook"}}})
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def titled(self, text: str) -> list[dict]:
        """The messages whose title contains `text` (e.g. "FAILURE", "challenger v")."""
        return [m for m in self.received if text in m.get("title", "")]



def airflow_env(home: Path, sql_conn: str | None = None, **extra: str) -> dict:
    """Environment of an isolated Airflow: its own home and metadata DB, the repo's dags folder."""
    env = base_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
                   AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
                   **extra)
    if sql_conn:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = sql_conn
    else:
        env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
    return env


_SQLITE_TEMPLATE: list[Path] = []   # the session's migrated SQLite metadata database (made once)


def migrate(env: dict) -> None:
    """`airflow db migrate` of env's metadata database. SQLite (no SQL_ALCHEMY_CONN): migrated once
    per session into a template, which each Airflow home gets a copy of: the same schema and rows
    that command writes, without its 10-20 s per test. PostgreSQL: migrated as it is."""
    if env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        sh([str(VENV_BIN / "airflow"), "db", "migrate"], env=env, timeout=300)
        return
    if not _SQLITE_TEMPLATE:
        import atexit
        import shutil
        import tempfile

        home = Path(tempfile.mkdtemp(prefix="xray-airflow-template-"))
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        sh([str(VENV_BIN / "airflow"), "db", "migrate"], env={**env, "AIRFLOW_HOME": str(home)}, timeout=300)
        _SQLITE_TEMPLATE.append(home / "airflow.db")
    import shutil

    target = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    assert not target.exists(), f"{target} exists: migrate() expects a fresh Airflow home"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_SQLITE_TEMPLATE[0], target)


def run_dag(env: dict, conf: dict, timeout: float = 420) -> dict:
    """One real `dag.test(run_conf=conf)`; returns run_dag.py's summary (state, tasks, xcom)."""
    proc = sh([sys.executable, str(RUN_DAG), "--conf", json.dumps(conf)], cwd=REPO, env=env,
              check=False, timeout=timeout)
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"dag.test failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    summary = json.loads(lines[-1])
    summary["log"] = proc.stdout + proc.stderr
    return summary


def states(summary: dict) -> dict[str, str]:
    return {task: info["state"] for task, info in summary["tasks"].items()}



def mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def alias(client, name: str, which: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, which).version)
    except MlflowException:
        return None


def versions(client, name: str) -> dict[int, dict]:
    return {int(mv.version): dict(mv.tags or {}) for mv in client.search_model_versions(f"name='{name}'")}

