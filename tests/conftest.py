"""Fixtures shared by every test area: the real dataset, small real subsets, a tiny trained model,
and a real MLflow tracking server."""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
# Caches and run outputs of the test session never land in the working tree.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="xray-tests-"))
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
os.environ.setdefault("XRAY_CACHE_DIR", str(_SESSION_TMP / "cache"))
os.environ.setdefault("XRAY_RUNS_DIR", str(_SESSION_TMP / "runs"))
os.environ.setdefault("XRAY_MODEL_CACHE_DIR", str(_SESSION_TMP / "models"))
os.environ.setdefault("MPLBACKEND", "Agg")

# The suite writes several GB at its peak (models, registries, venvs of the live site): below this much
# free space it stops at once with the reason, instead of failing somewhere with ENOSPC.
MIN_FREE_GB = float(os.environ.get("XRAY_TEST_MIN_FREE_GB", 8))
_disk = {"start": None, "lowest": None}


def _free_gb() -> float:
    return shutil.disk_usage(tempfile.gettempdir()).free / 2**30


def _watch_disk() -> None:
    while True:
        _disk["lowest"] = min(_disk["lowest"], _free_gb())
        time.sleep(5)


def pytest_sessionstart(session):
    free = _disk["start"] = _disk["lowest"] = _free_gb()
    if free < MIN_FREE_GB:
        pytest.exit(f"only {free:.1f} GB free under {tempfile.gettempdir()}; the suite needs about "
                    f"{MIN_FREE_GB:.0f} GB (XRAY_TEST_MIN_FREE_GB): free some space first", returncode=3)
    threading.Thread(target=_watch_disk, daemon=True, name="disk-watch").start()


def pytest_terminal_summary(terminalreporter):
    if _disk["start"] is not None:
        terminalreporter.write_line(
            f"disk under {tempfile.gettempdir()}: {_disk['start']:.1f} GB free at the start, "
            f"{_disk['lowest']:.1f} GB at the lowest, {_free_gb():.1f} GB at the end")


TINY = {"preprocess.image_size": 64, "train.epochs": 1, "train.batch_size": 16, "train.warmup_epochs": 0,
        "train.patience": 1, "data.min_side": 32, "data.min_images_per_class": 10,
        "evaluate.stress_images": 24, "gate.distance_margin": 1.5}


# How long a test MLflow server may take to answer (a loaded shared machine needs more than 120 s).
SERVER_START_TIMEOUT = float(os.environ.get("XRAY_TEST_SERVER_TIMEOUT", 120))


def shared_root() -> Path:
    return Path(os.environ.get("SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    root = shared_root()
    if not (root / "chest_xray").is_dir():
        pytest.skip(f"real dataset not found at {root} (set SHARED_DATASETS)")
    return root


def make_subset(dest: Path, n_per_class: int, seed: int = 0, source: Path | None = None) -> Path:
    """`dest/train/{NORMAL,PNEUMONIA}` holding symlinks to about n real images per class,
    whole patients only (so patient-grouped splits stay meaningful)."""
    from pipeline.data import dataset

    dataset.link_subset(source or shared_root() / "chest_xray" / "train", dest, n_per_class, seed)
    return dest


@pytest.fixture(scope="session")
def small_dataset(shared_datasets, tmp_path_factory) -> Path:
    return make_subset(tmp_path_factory.mktemp("small_dataset"), 60)


@pytest.fixture(scope="session")
def tiny_params():
    from pipeline.settings import config

    return config.apply_overrides(config.load_params(), TINY)


@pytest.fixture(scope="session")
def tiny_checkpoint(small_dataset, tiny_params, tmp_path_factory) -> Path:
    """model.pt trained for one short epoch at 64 px on the small real subset."""
    from pipeline.training.train import train

    return train(tiny_params, small_dataset, tmp_path_factory.mktemp("tiny_run"), progress=False).checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def start_mlflow_server(workdir: Path, backend_uri: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    backend = backend_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    if backend.startswith("postgresql://"):  # SQLAlchemy 2.1 would look for psycopg 3
        backend = backend.replace("postgresql://", "postgresql+psycopg2://", 1)
    log = open(workdir / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(workdir / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job-runner processes
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", timeout=SERVER_START_TIMEOUT, proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError((workdir / "mlflow-server.log").read_text()[-3000:])
    return proc, uri


def stop_process(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, served artifacts); sets MLFLOW_TRACKING_URI."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow"), os.environ.get("MLFLOW_TEST_BACKEND"))
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    stop_process(proc)
