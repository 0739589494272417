#!/usr/bin/env python3
"""The local stack: what `make run` / `make stop` / `make status` do.

  scripts/stack.py up        data -> MLflow -> Airflow -> one retraining run of the DAG -> web site
  scripts/stack.py down      stop everything `up` started (no process left behind)
  scripts/stack.py status    what runs, where, and the newest DAG run (exit 3 when something is stopped)

`up` on a fresh machine (the venv installed by `make setup`):
  1. imports DATA into DVC as data/chest_xray (scripts/import_data.sh: dvc add, git commit of the
     pointer, dvc push); QUICK=1 imports a seeded subset of QUICK_PER_CLASS images per class;
  2. starts MLflow (scripts/mlflow_server.sh --background: SQLite + ./.mlflow);
  3. starts Airflow 3 on SQLite (AIRFLOW_HOME=./.airflow, LocalExecutor): api-server, scheduler,
     dag-processor, each in its own session with a pid file;
  4. triggers one run of the DAG (`force`: it trains even when the data did not change) and waits,
     printing each task's state (scripts/stack_airflow.py run); QUICK=1 passes tiny training
     overrides and relaxes the promotion floors in .local/quick-params.yaml (given as XRAY_PARAMS);
  5. starts the web site under gunicorn (scripts/web_server.sh), creates the doctor account,
     and prints the URLs and logins.
Idempotent: a service whose pid file names a live process that answers its health check is left
alone; a DAG run already in flight is waited for, one that already succeeded is not repeated
(STACK_RETRAIN=1 forces a new one). `down` ends each service's whole session (SIGTERM, 20 s,
SIGKILL). Everything lives under .local/ (logs, pids, secrets), .airflow/ and .mlflow/, git-ignored.

Environment (all optional):
  DATA (../shared/datasets/chest_xray)  QUICK (empty; 1 = quick mode)  QUICK_PER_CLASS (150)
  STACK_HOST (127.0.0.1)  MLFLOW_PORT (5000)  AIRFLOW_PORT (8080)  WEB_PORT (8000)
  STACK_DIR (<repo>/.local)  AIRFLOW_HOME (<repo>/.airflow)  MLFLOW_DIR (<repo>/.mlflow)
  STACK_SKIP_DATA (0: 1 = keep the current data version)  STACK_SKIP_DAG (0: 1 = start services only)
  STACK_RETRAIN (0)  STACK_DAG_TIMEOUT_S (7200; quick 1200)  STACK_QUICK_OVERRIDES (QUICK_OVERRIDES below)
  DOCTOR_USERNAME (doctor)  DOCTOR_PASSWORD (generated once, kept in .local/secrets/doctor_password)
  AIRFLOW_ADMIN_USER (admin)  AIRFLOW_ADMIN_PASSWORD (generated once, .local/secrets/airflow_password)
  STACK_WEB_WORKERS (2)  STACK_OVERRIDES (JSON list of params overrides for a full run, [])
  STACK_AIRFLOW_SCHEDULE (0: 1 = the scheduler also creates the @daily runs)  XRAY_DAG_ID (xray_retrain)
  STACK_CHAMPION_WAIT_S (120): how long `up` waits for the site to load the champion model
  PACS_HTTP_PORT (8042)  PACS_DICOM_PORT (4242)  PACS_PASSWORD (generated once, .local/secrets/pacs_password)
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
VENV = REPO / ".venv"
PY = VENV / "bin" / "python"
AIRFLOW = str(VENV / "bin" / "airflow")


def env(name: str, default: object = "") -> str:
    """$name, or `default` when it is unset or empty (like the shell's ${name:-default})."""
    return os.environ.get(name) or str(default)


STACK_DIR = Path(env("STACK_DIR", REPO / ".local"))
LOGS, PIDS, SECRETS = STACK_DIR / "logs", STACK_DIR / "pids", STACK_DIR / "secrets"
HOST = env("STACK_HOST", "127.0.0.1")
MLFLOW_PORT = int(env("MLFLOW_PORT", 5000))
AIRFLOW_PORT = int(env("AIRFLOW_PORT", 8080))
WEB_PORT = int(env("WEB_PORT", 8000))
MLFLOW_URL, AIRFLOW_URL, WEB_URL = (f"http://{HOST}:{port}" for port in (MLFLOW_PORT, AIRFLOW_PORT, WEB_PORT))
MLFLOW_DIR = Path(env("MLFLOW_DIR", REPO / ".mlflow"))  # where mlflow_server.sh keeps its pid file and log
AIRFLOW_HOME = Path(env("AIRFLOW_HOME", REPO / ".airflow"))
DATA = Path(env("DATA", REPO.parent / "shared" / "datasets" / "chest_xray"))
QUICK = env("QUICK") not in ("", "0", "false")
QUICK_PER_CLASS = int(env("QUICK_PER_CLASS", 150))
DAG_ID = env("XRAY_DAG_ID", "xray_retrain")
ADMIN_USER = env("AIRFLOW_ADMIN_USER", "admin")

# Quick mode: one short epoch on small images (DAG run overrides: training-side keys only). The
# promotion floors are relaxed so that this demo model can become champion: a DAG run may not
# override the policy, so they go into a params file the Airflow processes read ($XRAY_PARAMS,
# written by quick_params); a real run (no QUICK) uses params.yaml's policy untouched.
QUICK_OVERRIDES = ('["train.epochs=1","train.warmup_epochs=0","preprocess.image_size=64",'
                   '"train.batch_size=16","train.patience=1"]')
QUICK_POLICY = ["promotion.floors.auc=0.5", "promotion.floors.sensitivity=0.5", "promotion.floors.specificity=0.0",
                "promotion.stress_floors.auc=0.5", "promotion.stress_floors.sensitivity=0.3",
                "promotion.stress_floors.specificity=0.0", "evaluate.stress_images=48"]


# ------------------------------------------------------------------------------------ output
def stamp() -> str:
    return time.strftime("%H:%M:%S")


def log(msg: str) -> None:
    print(f"\033[1m[stack {stamp()}]\033[0m {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"\033[1;33m[stack {stamp()}] {msg}\033[0m", file=sys.stderr, flush=True)


def die(msg: str) -> NoReturn:
    print(f"\033[1;31m[stack] error: {msg}\033[0m", file=sys.stderr, flush=True)
    raise SystemExit(1)


def rel(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (for short log lines)."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def tail(path: Path, lines: int = 30) -> None:
    if path.is_file():
        sys.stderr.write("".join(path.read_text(errors="replace").splitlines(True)[-lines:]))


# ------------------------------------------------------------------------------------ helpers
def http_get(url: str, timeout: float = 5) -> tuple[int | None, str]:
    """(status, start of the body) of a GET of `url`, whatever the status; (None, "") when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(300).decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(300).decode(errors="replace").strip()
    except (OSError, http.client.HTTPException):
        return None, ""


def port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def live_pid(pidfile: Path) -> int | None:
    """The pid in `pidfile` when that process lives AND works in this repository (a pid reused by
    another program after a crash or reboot does not count, so `down` never signals a stranger)."""
    try:
        pid = int(pidfile.read_text().strip())
        if pid <= 0:
            return None
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None  # not ours to read, so not ours (the stack's processes run as this user)
    return pid if cwd.is_relative_to(REPO) else None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, created readable by its owner only (mode 600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)


def secret(name: str, nbytes: int = 18) -> str:
    """A generated secret under .local/secrets, created once (directory 700, file 600)."""
    path = SECRETS / name
    if not path.is_file() or path.stat().st_size == 0:
        SECRETS.mkdir(parents=True, exist_ok=True)
        SECRETS.chmod(0o700)
        write_private(path, secrets.token_urlsafe(nbytes) + "\n")
    return path.read_text().strip()


def private_log(path: Path, append: bool = True):
    """`path` opened for writing, readable by its owner only (600), also when an older run left it
    world-readable: the logs hold sign-ins, account names and the printed logins (issue 25 item 17)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a" if append else "w")


def run_logged(cmd: list, logfile: Path, failure: str, append: bool = False, extra_env: dict | None = None) -> None:
    """Run `cmd` in the repository with its output in `logfile`; on failure show the log's end and stop."""
    with private_log(logfile, append) as out:
        rc = subprocess.run([str(c) for c in cmd], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, env={**os.environ, **(extra_env or {})}).returncode
    if rc != 0:
        tail(logfile)
        die(failure)


# ------------------------------------------------------------------------------------ services
def session_members(sid: int) -> list[int]:
    """Live processes of session `sid`: the service and everything it forked, also those that moved
    to a process group of their own (the task processes of Airflow)."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, _ppid, _pgrp, session = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, IndexError, ValueError):
            continue
        if int(session) == sid and state != "Z":
            members.append(int(proc.name))
    return members


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Service:
    """A long-running process of the stack: a pid file, a log file, an optional port and health URL.
    It starts in a session of its own (its pid is the session id), so `stop` finds all it forked."""

    def __init__(self, name: str, port: int | None = None, health_url: str = "", pidfile: Path | None = None):
        self.name, self.port, self.health_url = name, port, health_url
        self.pidfile = pidfile or PIDS / f"{name}.pid"
        self.logfile = LOGS / f"{name}.log"

    def pid(self) -> int | None:
        return live_pid(self.pidfile)

    def healthy(self) -> bool:
        return http_get(self.health_url, timeout=3)[0] == 200

    def start(self, cmd: list, extra_env: dict | None = None) -> None:
        if pid := self.pid():
            log(f"{self.name} already running (pid {pid})")
            return
        self.pidfile.unlink(missing_ok=True)
        if self.port and port_busy(self.port):
            die(f"{self.name}: http://{HOST}:{self.port} is already taken by a process this stack did not start "
                "(another engineer's server?). Pick another port (see scripts/stack.py --help) or stop it.")
        cmd = [str(c) for c in cmd]
        with private_log(self.logfile) as out:
            out.write(f"==== {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ} {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(extra_env or {})}, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pidfile.write_text(f"{proc.pid}\n")
        log(f"{self.name} started (pid {proc.pid}, log {rel(self.logfile)})")

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.pidfile.exists() and not self.pid():
                tail(self.logfile)
                die(f"{self.name} exited while starting (log: {self.logfile})")
            if time.monotonic() >= deadline:
                die(f"{self.name}: no healthy answer at {self.health_url} after {timeout_s:.0f}s (log: {self.logfile})")
            time.sleep(2)

    def stop(self) -> None:
        """SIGTERM the whole session, wait up to 20 s, SIGKILL what is left."""
        if pid := self.pid():
            signal_all([pid, *session_members(pid)], signal.SIGTERM)
            deadline = time.monotonic() + 20
            while (left := session_members(pid)) and time.monotonic() < deadline:
                time.sleep(0.5)
            if left:
                warn(f"{self.name}: killing what did not stop in 20s: {' '.join(map(str, left))}")
                signal_all(left, signal.SIGKILL)
            log(f"{self.name} stopped")
        self.pidfile.unlink(missing_ok=True)


MLFLOW = Service("mlflow", MLFLOW_PORT, f"{MLFLOW_URL}/health", MLFLOW_DIR / "server.pid")  # run by mlflow_server.sh
API_SERVER = Service("airflow-apiserver", AIRFLOW_PORT, f"{AIRFLOW_URL}/api/v2/monitor/health")
SCHEDULER = Service("airflow-scheduler")
DAG_PROCESSOR = Service("airflow-dag-processor")
WEB = Service("web", WEB_PORT, f"{WEB_URL}/healthz")
PACS_HTTP_PORT, PACS_DICOM_PORT = int(env("PACS_HTTP_PORT", 8042)), int(env("PACS_DICOM_PORT", 4242))
PACS_URL = f"http://{HOST}:{PACS_HTTP_PORT}"
PACS = Service("orthanc", PACS_HTTP_PORT, f"{PACS_URL}/app/explorer.html")  # answers 401 when up (auth)
PACS_WORKER = Service("pacs-worker")


# ------------------------------------------------------------------------------------ environment
def export_environment() -> None:
    """What every process of the stack inherits."""
    os.environ.update({"AIRFLOW_HOME": str(AIRFLOW_HOME), "MLFLOW_TRACKING_URI": MLFLOW_URL, "MLFLOW_HOST": HOST,
                       "MLFLOW_PORT": str(MLFLOW_PORT), "PATH": f"{VENV / 'bin'}:{env('PATH')}"})
    # The checkout every process acts on, said explicitly: `pipeline` is installed in the venv (pip
    # install -e), possibly from another checkout sharing that venv, so its own location is no guide.
    for name, default in (("XRAY_REPO", REPO), ("XRAY_PARAMS", REPO / "params.yaml"),
                          ("XRAY_CACHE_DIR", REPO / ".cache" / "preprocess"),
                          ("XRAY_MODEL_CACHE_DIR", REPO / ".cache" / "models"), ("XRAY_RUNS_DIR", REPO / "runs")):
        os.environ[name] = env(name, default)


def worker_log_port() -> str:
    """The scheduler's task-log server takes 8793 by default; on a shared machine another Airflow may
    hold it, so take a free port then (the api-server reads local task logs from files anyway). Kept in
    $AIRFLOW_HOME/log_server_port: a running scheduler keeps the port it has."""
    path = AIRFLOW_HOME / "log_server_port"
    saved = path.read_text().strip() if path.is_file() else ""
    if saved.isdigit() and (SCHEDULER.pid() or not port_busy(int(saved))):
        return saved
    port = "8793"
    if port_busy(8793):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    path.write_text(port + "\n")
    return port


def airflow_env() -> None:
    """Airflow 3 on SQLite, LocalExecutor, only this project's DAG; scheduled runs off (the stack
    triggers its own run; STACK_AIRFLOW_SCHEDULE=1 turns the @daily schedule back on)."""
    os.environ.update({
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": env("AIRFLOW__CORE__PARALLELISM", 2),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(AIRFLOW_HOME / "passwords.json"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{AIRFLOW_URL}/execution/",
        "AIRFLOW__API__BASE_URL": AIRFLOW_URL,
        "AIRFLOW__API__HOST": HOST, "AIRFLOW__API__PORT": str(AIRFLOW_PORT), "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret("airflow_jwt_secret"),
        "AIRFLOW__API__SECRET_KEY": secret("airflow_api_secret"),
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True" if env("STACK_AIRFLOW_SCHEDULE", 0) == "1" else "False",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT":
            env("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT") or worker_log_port(),
        "AIRFLOW_ADMIN_USER": ADMIN_USER,
        "AIRFLOW_ADMIN_PASSWORD": env("AIRFLOW_ADMIN_PASSWORD") or secret("airflow_password"),
    })


def web_env() -> dict:
    """The site as `make run` serves it (issue 25 item 17): DEBUG off (no debug pages, static files
    collected by web_server.sh and served by whitenoise), a generated secret key kept in
    .local/secrets (600), only this machine's host names. DJANGO_* given by the caller win."""
    hosts = ",".join(dict.fromkeys([HOST, "127.0.0.1", "localhost"]))
    return {"DJANGO_DEBUG": env("DJANGO_DEBUG", 0),
            "DJANGO_SECRET_KEY": env("DJANGO_SECRET_KEY") or secret("django_secret_key", 50),
            "DJANGO_ALLOWED_HOSTS": env("DJANGO_ALLOWED_HOSTS", hosts)}


def doctor_env() -> None:
    os.environ["DOCTOR_USERNAME"] = env("DOCTOR_USERNAME", "doctor")
    os.environ["DOCTOR_PASSWORD"] = env("DOCTOR_PASSWORD") or secret("doctor_password")


def stack_airflow(command: str, capture: bool = False, **extra: str) -> subprocess.CompletedProcess:
    """scripts/stack_airflow.py COMMAND (run | last) against this stack's Airflow."""
    return subprocess.run(
        [str(PY), str(SCRIPTS / "stack_airflow.py"), command], cwd=REPO, capture_output=capture, text=True,
        env={**os.environ, "AIRFLOW_URL": AIRFLOW_URL, "AIRFLOW_USER": ADMIN_USER, "XRAY_DAG_ID": DAG_ID,
             "AIRFLOW_PASSWORD": os.environ["AIRFLOW_ADMIN_PASSWORD"], **extra})


# ------------------------------------------------------------------------------------ steps of `up`
def quick_subset() -> Path:
    """A seeded subset of QUICK_PER_CLASS images per class, whole patients, as symlinks (import_data.sh
    copies what they point to); the same subset every time, so a second `up` is no new data version."""
    from pipeline.data import dataset  # the same seeded, patient-preserving subset the tests use

    root = DATA.resolve()
    source = root / "train" if (root / "train").is_dir() else root
    dest = STACK_DIR / "quick-data"
    if dest.exists():
        shutil.rmtree(dest)
    picked = dataset.link_subset(source, dest, QUICK_PER_CLASS, 42)
    if not picked:
        die(f"no images under {source}")
    print(f"    quick mode: {len(picked)} images (about {QUICK_PER_CLASS} per class, whole patients) from {source}")
    return dest


def step_data() -> None:
    if env("STACK_SKIP_DATA", 0) == "1":
        log("data: STACK_SKIP_DATA=1, keeping the current data version")
        return
    if not DATA.is_dir():
        die(f"dataset folder '{DATA}' does not exist (set DATA=<folder with train/{{NORMAL,PNEUMONIA}}>)")
    source = quick_subset() if QUICK else DATA
    logfile = LOGS / "import-data.log"
    log(f"data: importing {source} into DVC (scripts/import_data.sh; log {rel(logfile)})")
    run_logged([SCRIPTS / "import_data.sh", source], logfile, "data import failed (see above)",
               extra_env={"XRAY_GIT_PUSH": env("XRAY_GIT_PUSH", 0)})
    for line in logfile.read_text(errors="replace").splitlines():
        if '"hash"' in line or '"nfiles"' in line:
            print("    data version " + line.translate(str.maketrans("", "", ' ,"')))


def step_mlflow() -> None:
    if (pid := MLFLOW.pid()) and MLFLOW.healthy():
        log(f"mlflow already running (pid {pid})")
    else:
        if port_busy(MLFLOW_PORT):
            die(f"port {MLFLOW_PORT} is taken by a process this stack did not start; set MLFLOW_PORT=<free port>")
        log(f"mlflow: starting on {MLFLOW_URL}")
        if subprocess.run([str(SCRIPTS / "mlflow_server.sh"), "--background"], cwd=REPO).returncode != 0:
            die(f"mlflow did not start (log: {MLFLOW_DIR / 'server.log'})")
    link = LOGS / "mlflow.log"
    link.unlink(missing_ok=True)
    link.symlink_to(MLFLOW_DIR / "server.log")


def quick_params() -> None:
    """QUICK: params.yaml + QUICK_POLICY -> $STACK_DIR/quick-params.yaml, exported as XRAY_PARAMS."""
    if not QUICK:
        return
    import yaml
    from pipeline.settings import config

    path = STACK_DIR / "quick-params.yaml"
    path.write_text(yaml.safe_dump(config.load_params(None, QUICK_POLICY).to_dict(), sort_keys=False))
    os.environ["XRAY_PARAMS"] = str(path)
    log(f"quick mode: promotion policy relaxed in {path} ({' '.join(QUICK_POLICY)})")


def step_airflow() -> None:
    airflow_env()
    quick_params()  # before the Airflow processes start: they inherit XRAY_PARAMS
    # the admin login, written before the api-server starts (SimpleAuthManager reads this file)
    write_private(Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]),
                  json.dumps({ADMIN_USER: os.environ["AIRFLOW_ADMIN_PASSWORD"]}))
    if not SCHEDULER.pid():
        log(f"airflow: migrating the metadata database ({AIRFLOW_HOME / 'airflow.db'})")
        run_logged([AIRFLOW, "db", "migrate"], LOGS / "airflow-db-migrate.log", "airflow db migrate failed")
    API_SERVER.start([AIRFLOW, "api-server", "--host", HOST, "--port", AIRFLOW_PORT, "--workers", 1])
    SCHEDULER.start([AIRFLOW, "scheduler"])
    DAG_PROCESSOR.start([AIRFLOW, "dag-processor"])
    API_SERVER.wait_healthy(180)
    log(f"airflow: up at {AIRFLOW_URL}")


def step_dag() -> None:
    if env("STACK_SKIP_DAG", 0) == "1":
        log("dag: STACK_SKIP_DAG=1, not triggering")
        return
    if QUICK:
        name, overrides, timeout = "STACK_QUICK_OVERRIDES", env("STACK_QUICK_OVERRIDES", QUICK_OVERRIDES), "1200"
        log(f"dag: quick mode: overrides {overrides}")
    else:
        name, overrides, timeout = "STACK_OVERRIDES", env("STACK_OVERRIDES", "[]"), "7200"
    try:
        conf = {"force": True, "overrides": json.loads(overrides)}
    except json.JSONDecodeError as exc:
        die(f"{name} is not JSON ({exc}): {overrides}")
    log(f"dag: one retraining cycle of '{DAG_ID}' (progress below; the Airflow UI shows the same)")
    if stack_airflow("run", STACK_DAG_CONF=json.dumps(conf),
                     STACK_DAG_TIMEOUT_S=env("STACK_DAG_TIMEOUT_S", timeout)).returncode != 0:
        die("the DAG run did not succeed; the services keep running so you can look (make stop to end)")


def wait_champion() -> None:
    """The workers load the champion in the background: say "up" once it answers."""
    deadline = time.monotonic() + float(env("STACK_CHAMPION_WAIT_S", 120))
    while http_get(f"{WEB_URL}/healthz?ready=1", timeout=3)[0] != 200:
        if time.monotonic() >= deadline:
            log("web: no champion model loaded yet (/healthz tells why); the site says so until one is promoted")
            return
        time.sleep(2)


def step_web() -> None:
    doctor_env()
    if pid := WEB.pid():
        log(f"web already running (pid {pid})")
        WEB.wait_healthy(60)
        wait_champion()
        return
    manage, logfile = [PY, "django_app/manage.py"], LOGS / "web-migrate.log"
    run_logged([*manage, "migrate", "--noinput"], logfile, "web: migrate failed", extra_env=web_env())
    run_logged([*manage, "create_doctor", os.environ["DOCTOR_USERNAME"], "--update"], logfile,
               "web: create_doctor failed", append=True,
               extra_env={**web_env(), "XRAY_DOCTOR_PASSWORD": os.environ["DOCTOR_PASSWORD"]})
    # gunicorn reads WEB_BIND / WEB_WORKERS (django_app/gunicorn.conf.py)
    WEB.start([SCRIPTS / "web_server.sh"],
              {**web_env(), "WEB_BIND": f"{HOST}:{WEB_PORT}", "WEB_WORKERS": env("STACK_WEB_WORKERS", 2)})
    WEB.wait_healthy(180)
    wait_champion()


def step_pacs() -> None:
    """Orthanc (Debian's package, its own process and config under .local/orthanc) and the PACS
    worker (manage.py pacs_worker), both supervised like the other services (docs/pacs.md)."""
    if not shutil.which("Orthanc"):
        warn("Orthanc is not installed (make setup installs Debian's orthanc): no local PACS")
        return
    password = env("PACS_PASSWORD") or secret("pacs_password")
    root = STACK_DIR / "orthanc"
    write_private(root / "orthanc.json", json.dumps({
        "Name": "XRAYPACS", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": PACS_HTTP_PORT, "DicomPort": PACS_DICOM_PORT, "DicomAet": "XRAYPACS",
        "RemoteAccessAllowed": HOST != "127.0.0.1", "AuthenticationEnabled": True,
        "RegisteredUsers": {"pacs": password}, "Plugins": ["/usr/share/orthanc/plugins"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 3,
        "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False}, indent=1))
    PACS.start(["Orthanc", root / "orthanc.json"])
    deadline = time.monotonic() + 30
    while http_get(PACS.health_url)[0] not in (200, 401) and time.monotonic() < deadline:
        time.sleep(1)
    PACS_WORKER.start([PY, "django_app/manage.py", "pacs_worker"],
                      {**web_env(), "XRAY_PACS_URL": PACS_URL, "XRAY_PACS_PASSWORD": password,
                       "XRAY_PACS_DICOM_PORT": str(PACS_DICOM_PORT)})


def print_summary() -> None:
    quick = " (QUICK mode: a demo model trained on a few hundred images for one epoch, NOT for clinical use)"
    print(f"""
  The platform is up{quick if QUICK else ""}.

    Web site (doctors)       {WEB_URL}/      login: {os.environ["DOCTOR_USERNAME"]} / {os.environ["DOCTOR_PASSWORD"]}
    MLflow UI (reviewers)    {MLFLOW_URL}/
    Airflow UI (operators)   {AIRFLOW_URL}/      login: {ADMIN_USER} / {os.environ["AIRFLOW_ADMIN_PASSWORD"]}
    PACS (Orthanc)           {PACS_URL}/  DICOMweb {PACS_URL}/dicom-web/  DICOM AE XRAYPACS port {PACS_DICOM_PORT}
                             login: pacs / {env("PACS_PASSWORD") or secret("pacs_password")}   worklist {WEB_URL}/worklist/

    Health of the site:      {http_get(f"{WEB_URL}/healthz")[1] or "(no answer)"}
    Logs:                    {rel(LOGS)}/   (web.log, mlflow.log, airflow-*.log; task logs in {rel(AIRFLOW_HOME)}/logs)
    Stop everything:         make stop
""", flush=True)


# ------------------------------------------------------------------------------------ commands
def cmd_up() -> int:
    if not os.access(PY, os.X_OK):
        die("no virtual environment at .venv: run 'make setup' (make run does it for you)")
    for needed in ("scripts/mlflow_server.sh", "scripts/import_data.sh", "scripts/web_server.sh", "dags"):
        if not (REPO / needed).exists():
            die(f"{needed} is missing from this checkout")
    LOGS.mkdir(parents=True, exist_ok=True)
    LOGS.chmod(0o700)
    for old in LOGS.glob("*.log"):  # left world-readable by an earlier version
        if not old.is_symlink():
            old.chmod(0o600)
    PIDS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"repo {REPO}{' (QUICK mode)' if QUICK else ''}")
    step_data()
    step_mlflow()
    step_airflow()
    step_dag()
    step_web()
    step_pacs()
    print_summary()
    log(f"ready in {time.monotonic() - started:.0f}s")
    return 0


def cmd_down() -> int:
    for service in (PACS_WORKER, PACS, WEB, DAG_PROCESSOR, SCHEDULER, API_SERVER):
        service.stop()
    if MLFLOW.pidfile.exists():
        out = subprocess.run([str(SCRIPTS / "mlflow_server.sh"), "--stop"], cwd=REPO, capture_output=True, text=True)
        for line in (out.stdout + out.stderr).splitlines():
            print(f"    {line}")
        log("mlflow stopped")
    log("everything the stack started is stopped")
    return 0


def cmd_status() -> int:
    rc = 0
    for service in (API_SERVER, SCHEDULER, DAG_PROCESSOR, WEB, MLFLOW, PACS, PACS_WORKER):
        pid = service.pid()
        print(f"  {service.name}: {f'running (pid {pid})' if pid else 'stopped'}", flush=True)
        rc = rc if pid else 3
    if API_SERVER.pid():
        airflow_env()
        last = stack_airflow("last", capture=True)
        print(f"  newest DAG run: {(last.stdout + last.stderr).strip()}")
    if WEB.pid():
        print(f"  web /healthz: {http_get(f'{WEB_URL}/healthz')[1]}")
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/stack.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "stop", "status"], help="stop is down")
    command = parser.parse_args(argv).command
    if PY.exists() and Path(sys.prefix).resolve() != VENV.resolve():  # e.g. run as `scripts/stack.py up`
        os.execv(PY, [str(PY), __file__, command])
    os.chdir(REPO)
    export_environment()
    try:
        return {"up": cmd_up, "down": cmd_down, "stop": cmd_down, "status": cmd_status}[command]()
    except KeyboardInterrupt:
        warn("interrupted: what was started keeps running (make stop ends it)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
