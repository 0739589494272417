"""Fixtures of the registry suite: real `mlflow server` processes started by scripts/mlflow_server.sh.

`mlflow_server` here overrides the one in tests/conftest.py for this folder and is parametrized by
backend: "sqlite" always, "postgresql" when PostgreSQL answers at $REGISTRY_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/postgres, trust auth): a fresh database per session, dropped at
the end. MLFLOW_TEST_BACKEND=<uri> replaces the list with that one backend (as the lead's fixture).
Pytest runs every test of one backend before starting the next server (session-scoped parameter).
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests
from registry_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "mlflow_server.sh"
PG_ADMIN = os.environ.get("REGISTRY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

_TMP = Path(tempfile.mkdtemp(prefix="xray-registry-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)   # downloaded models (45 MB each)
os.environ.setdefault("XRAY_MODEL_CACHE_DIR", str(_TMP / "models"))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")   # a dead test server fails in seconds


def _pg_reachable() -> bool:
    try:
        import psycopg2

        psycopg2.connect(PG_ADMIN, connect_timeout=2).close()
        return True
    except Exception:  # noqa: BLE001
        return False


def _backends() -> list:
    if os.environ.get("MLFLOW_TEST_BACKEND"):
        return [pytest.param(os.environ["MLFLOW_TEST_BACKEND"], id="env-backend")]
    marks = [] if _pg_reachable() else [pytest.mark.skip(reason=f"PostgreSQL not reachable at {PG_ADMIN}")]
    return [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql", marks=marks)]


def _pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


class ServerProcess:
    """scripts/mlflow_server.sh in the foreground, in its own process group."""

    def __init__(self, workdir: Path, backend_uri: str, port: int | None = None):
        self.workdir, self.backend_uri = workdir, backend_uri
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_DIR": str(workdir), "MLFLOW_PORT": str(self.port),
               "MLFLOW_HOST": "127.0.0.1", "MLFLOW_WORKERS": "2", "MLFLOW_BACKEND_STORE_URI": backend_uri}
        env.pop("MLFLOW_ARTIFACTS_DESTINATION", None)
        self.log = workdir / "server.log"
        self.proc = subprocess.Popen([str(SCRIPT)], env=env, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = float(os.environ.get("XRAY_TEST_SERVER_TIMEOUT", 120))) -> "ServerProcess":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(self.uri + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{self.uri} did not answer within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session", params=_backends())
def mlflow_server(request, tmp_path_factory):
    """Tracking URI of a real MLflow server (SQLite file or a fresh PostgreSQL database)."""
    kind = request.param
    workdir = tmp_path_factory.mktemp(f"mlflow-{kind.split(':')[0]}")
    db = None
    if kind == "sqlite":
        backend = f"sqlite:///{workdir / 'mlflow.db'}"
    elif kind == "postgresql":
        db = f"xray_registry_test_{uuid.uuid4().hex[:10]}"
        _pg_admin(f'CREATE DATABASE "{db}"')
        backend = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
    else:
        backend = kind
    server = ServerProcess(workdir, backend).wait()
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = server.uri
    server.backend = kind
    yield server.uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    server.stop()
    if db:
        _pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@pytest.fixture(scope="session")
def reg_params(tiny_params) -> dict:
    """Tiny training settings; the promotion policy as in params.yaml."""
    return tiny_params


@pytest.fixture(scope="session")
def loose_params(tiny_params) -> dict:
    """Floors off: a 1-epoch 64 px model on 120 images cannot reach the production floors, and the
    tests about comparisons must not depend on that."""
    from pipeline.settings import config

    return config.apply_overrides(tiny_params, {"promotion.floors": {}, "promotion.stress_floors": {},
                                                "promotion.external_floors": {}})


@pytest.fixture(scope="session")
def trained(mlflow_server, small_dataset, reg_params, tmp_path_factory) -> dict:
    """One real tracked training run (1 epoch, 64 px, ~120 images) per server."""
    from pipeline.mlops import tracking

    result = tracking.tracked_train(reg_params, small_dataset, tmp_path_factory.mktemp("tracked_run"),
                                    tags={"trigger": "test"}, data_version="0123456789abcdef0123")
    assert result["metrics"]["auc"] > 0.6, f"tiny model failed to learn: {result['metrics']}"
    return result


@pytest.fixture(scope="session")
def constant_checkpoint(trained, tmp_path_factory) -> Path:
    """The trained checkpoint with every weight zeroed and an identity calibration: P(pneumonia) = 0.5
    for any image, so AUC is exactly 0.5; a threshold of 0.25 (set here: the trained one depends on the
    CPU's arithmetic) calls everything PNEUMONIA (specificity 0)."""
    import torch

    ckpt = torch.load(trained["checkpoint"], map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {k: torch.zeros_like(v) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    ckpt["threshold"], ckpt["calibration"] = 0.25, {"a": 1.0, "b": 0.0}
    path = tmp_path_factory.mktemp("degraded") / "model.pt"
    torch.save(ckpt, path)
    return path


@pytest.fixture
def model_name(mlflow_server, monkeypatch, request) -> str:
    """A registered-model name of this test alone ($XRAY_MODEL_NAME), so tests do not share aliases."""
    name = f"xray-{request.node.originalname.replace('_', '-')[:40]}-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("XRAY_MODEL_NAME", name)
    return name


@pytest.fixture(scope="session")
def logged_models(mlflow_server, trained, constant_checkpoint, loose_params) -> dict:
    """Logged-model URIs (models:/m-...) of the trained and the zeroed model, each uploaded once."""
    from mlflow import MlflowClient

    from pipeline.settings import config
    from pipeline.mlops import tracking

    client = MlflowClient(mlflow_server)
    good = client.get_model_version(config.model_name(loose_params), str(trained["version"])).source
    params = config.apply_overrides(loose_params, {"registry.model_name": "xray-test-degraded"})
    saved = os.environ.pop("XRAY_MODEL_NAME", None)
    try:
        zeroed = tracking.register_checkpoint(constant_checkpoint, params, run_name="zeroed-weights",
                                              tags={"trigger": "test", "degraded": "weights zeroed"})
    finally:
        if saved is not None:
            os.environ["XRAY_MODEL_NAME"] = saved
    return {"good": good, "constant": client.get_model_version("xray-test-degraded", str(zeroed["version"])).source}


@pytest.fixture
def register(model_name, logged_models):
    """register("good" | "constant") -> a new version of this test's model (no re-upload: a registered
    version of an already logged model, as mlflow.register_model("models:/m-...") does)."""
    import mlflow

    def _register(kind: str) -> int:
        version = mlflow.register_model(logged_models[kind], model_name, tags={"kind": kind}).version
        mlflow.MlflowClient().set_registered_model_alias(model_name, "challenger", version)  # as tracked_train
        return int(version)
    return _register


@pytest.fixture(scope="session")
def xray_bytes(shared_datasets) -> list[bytes]:
    """Full-resolution originals, as doctors upload them: two of each class."""
    files = [sorted((shared_datasets / "fullres_samples" / cls).iterdir())[:2] for cls in ("NORMAL", "PNEUMONIA")]
    return [p.read_bytes() for group in files for p in group]
