"""The site as it runs for real, for the live tests: scripts/web_server.sh -> gunicorn workers over
a real MLflow server, and Debian's chromium. The fixtures that start them are in conftest.py.

The site runs on the web image's own packages: a venv of requirements/web.txt (no torch, no
training tools), built once per lock under .cache/web-venv/ (`site_python`), with this checkout on
its path; XRAY_SITE_PYTHON=<python> runs it on that interpreter instead. Either way tests/web/no_torch
comes first on its path, so an import of torch fails there as it does in the image."""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
NO_TORCH = Path(__file__).resolve().parent / "no_torch"  # the web image has no torch: neither has the live site
PY = sys.executable
DOCTOR, DOCTOR_PASSWORD = "dr_live", "live-password-2031-xray"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@functools.lru_cache(maxsize=None)
def site_python() -> str:
    """The live site's interpreter (module docstring); the venv is made atomically, once per lock."""
    if os.environ.get("XRAY_SITE_PYTHON"):
        return os.environ["XRAY_SITE_PYTHON"]
    lock = REPO / "requirements" / "web.txt"
    target = REPO / ".cache" / "web-venv" / hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    if not (target / "bin" / "python").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
        try:
            subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
            run = subprocess.run(["bash", str(REPO / "scripts" / "install_locked.sh"), str(tmp / "bin" / "python"),
                                  str(lock)], capture_output=True, text=True, timeout=1800)
            if run.returncode != 0:
                raise RuntimeError(f"the web tier's venv could not be built from {lock} (set XRAY_SITE_PYTHON to "
                                   f"use another interpreter):\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target / "bin" / "python")


def site_env(registry, data_dir: Path, port: int, **extra) -> dict:
    ours = ("XRAY_WEB_DATA_DIR", "XRAY_MEDIA_ROOT", "XRAY_MAX_UPLOAD_MB", "XRAY_MODEL_NAME", "DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_") and k not in ours}
    env.update({
        "DJANGO_ENV": "development", "DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "live-test-" + "k" * 50,
        "XRAY_WEB_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": registry["uri"],
        "XRAY_MODEL_NAME": registry["name"], "XRAY_CHAMPION_CHECK_SECONDS": "1",
        "WEB_BIND": f"127.0.0.1:{port}", "WEB_WORKERS": "2", "WEB_ACCESS_LOG": "",
        "XRAY_DOCTOR_USERNAME": DOCTOR, "XRAY_DOCTOR_PASSWORD": DOCTOR_PASSWORD,
        "PYTHON": site_python(),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(NO_TORCH), str(REPO), str(REPO / "django_app"),
                                                    os.environ.get("PYTHONPATH")])),
        # the live tests send bursts of requests; the limits themselves are tested in test_rate_limits.py
        "XRAY_UPLOADS_PER_MINUTE": "100000", "XRAY_TOKEN_UPLOADS_PER_MINUTE": "100000",
    })
    env.update(extra)
    return env


def manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([site_python(), "manage.py", *args], cwd=REPO / "django_app", env=env, capture_output=True,
                          text=True, timeout=120)


class Site:
    def __init__(self, env: dict, port: int, log: Path):
        self.env, self.url, self.log = env, f"http://127.0.0.1:{port}", log
        self.proc = subprocess.Popen(["bash", str(REPO / "scripts" / "web_server.sh")], env=env,
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, path="/healthz?ready=1", timeout=150, headers=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web_server.sh exited {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if requests.get(self.url + path, timeout=5, headers=headers).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(self.log.read_text()[-4000:])

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def predict(site, data: bytes, name="x.jpeg", **params):
    return requests.post(site.url + "/api/predict", files={"image": (name, data)}, params=params,
                         headers={"Authorization": f"Token {site.token}"}, timeout=60)


def wait_serving(site, version: int, data: bytes, timeout: float = 90) -> None:
    """Until every gunicorn worker answers with `version` (8 answers in a row: the workers check
    the alias each second and load a model in the background; a loaded machine takes longer)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(predict(site, data).json()["model_version"] == version for _ in range(8)):
            return
        time.sleep(0.5)
    raise AssertionError(f"the site did not serve v{version} within {timeout:.0f}s")


def screenshot_dir(tmp_path: Path) -> Path:
    """Screenshots go to the test's tmp dir, and also to $XRAY_SCREENSHOT_DIR when set."""
    target = Path(os.environ["XRAY_SCREENSHOT_DIR"]) if os.environ.get("XRAY_SCREENSHOT_DIR") else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    return target
