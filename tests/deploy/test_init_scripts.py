"""The one-shot scripts of the production stack, run for real outside Docker:

- docker/postgres/init-databases.sh against a throwaway PostgreSQL cluster (initdb; skipped when the
  PostgreSQL server binaries are absent): three roles + databases, each role can use only its own;
- docker/airflow/init.sh with a stand-in `airflow` program: the admin login file and the git + DVC
  repository the DAG pulls data versions into;
- docker/healthcheck.py against a real HTTP server.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- PostgreSQL init
def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for cand in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(cand)
    return None


@pytest.fixture
def postgres_cluster():
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl and shutil.which("psql")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            import pwd
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="xray-pg-"))
    if as_user:
        shutil.chown(base, "postgres")
    data, port = base / "data", free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "-E", "UTF8"],
                   check=True, capture_output=True, env=env)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(base / "log"), "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, env=env)
    try:
        yield {"socket": str(base), "port": port, "as_user": as_user}
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def psql_tcp(cluster, user, password, db, sql) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(cluster["port"]), "-U", user, "-d", db,
                           "-v", "ON_ERROR_STOP=1", "-tAc", sql],
                          capture_output=True, text=True, env={**os.environ, "PGPASSWORD": password})


def test_postgres_init_creates_one_private_database_per_service(postgres_cluster):
    c = postgres_cluster
    creds = {"airflow": "pw-airflow 'quoted\"", "mlflow": "pw-mlflow", "web": "pw-web"}
    env = {**os.environ, "POSTGRES_USER": "postgres", "PGHOST": c["socket"], "PGPORT": str(c["port"]),
           "AIRFLOW_DB_PASSWORD": creds["airflow"], "MLFLOW_DB_PASSWORD": creds["mlflow"],
           "WEB_DB_PASSWORD": creds["web"], "WEB_DB_READER_PASSWORD": "pw-reader"}
    script = REPO / "docker/postgres/init-databases.sh"
    keep = ["POSTGRES_USER", "PGHOST", "PGPORT", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "WEB_DB_PASSWORD",
            "WEB_DB_READER_PASSWORD", "PATH"]
    argv = ["bash", str(script)]
    if c["as_user"]:  # psql over the socket as the superuser, as the postgres image's entrypoint does
        argv = [*c["as_user"], "env", *[f"{k}={env[k]}" for k in keep], *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for user, password in creds.items():
        ok = psql_tcp(c, user, password, user, "CREATE TABLE t (x int); INSERT INTO t VALUES (1); SELECT count(*) FROM t")
        assert ok.returncode == 0 and ok.stdout.split()[-1] == "1", ok.stderr
        wrong = psql_tcp(c, user, "wrong", user, "SELECT 1")
        assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
    # no service can open another service's database
    denied = psql_tcp(c, "airflow", creds["airflow"], "mlflow", "SELECT 1")
    assert denied.returncode != 0 and "permission denied" in denied.stderr, denied.stderr
    # a missing password stops the script instead of creating a role without one
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "POSTGRES_USER": "postgres"})
    assert proc.returncode != 0 and "missing user/password" in proc.stderr


# ----------------------------------------------------------------------------- Airflow init
@pytest.fixture
def fake_airflow(tmp_path) -> Path:
    """A stand-in `airflow` program that records its arguments."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "airflow"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/airflow-calls\necho 3.3.2\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return bindir


def run_airflow_init(tmp_path, bindir, **extra) -> subprocess.CompletedProcess:
    env = {"PATH": f"{bindir}:{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "AIRFLOW_HOME": str(tmp_path / "airflow"), "APP_HOME": str(REPO),
           "AIRFLOW_ADMIN_USER": "chief", "AIRFLOW_ADMIN_PASSWORD": "s3cret-pw",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "auth" / "passwords.json"),
           "XRAY_REPO": str(tmp_path / "repo"), **extra}
    return subprocess.run(["bash", str(REPO / "docker/airflow/init.sh")], capture_output=True, text=True, env=env)


def test_airflow_init_migrates_and_writes_the_admin_login(tmp_path, fake_airflow):
    proc = run_airflow_init(tmp_path, fake_airflow)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "db migrate" in (tmp_path / "airflow-calls").read_text()
    pw = tmp_path / "auth" / "passwords.json"
    assert json.loads(pw.read_text()) == {"chief": "s3cret-pw"}
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    # the DAG's repository: a git repo holding the image's DVC config (and pointer, when imported)
    repo = tmp_path / "repo"
    assert (repo / ".git").is_dir() and (repo / ".dvc" / "config").is_file()
    log = subprocess.run(["git", "-C", str(repo), "log", "--oneline"], capture_output=True, text=True).stdout
    assert len(log.splitlines()) == 1
    # idempotent: a second run changes nothing and adds no commit
    proc = run_airflow_init(tmp_path, fake_airflow)
    assert proc.returncode == 0, proc.stderr
    log2 = subprocess.run(["git", "-C", str(repo), "log", "--oneline"], capture_output=True, text=True).stdout
    assert log2 == log


def test_airflow_init_clones_the_project_when_a_git_url_is_given(tmp_path, fake_airflow):
    origin = tmp_path / "origin"
    (origin / ".dvc").mkdir(parents=True)
    (origin / ".dvc" / "config").write_text("[core]\n    remote = minio\n")
    (origin / "data").mkdir()
    (origin / "data" / "chest_xray.dvc").write_text("outs:\n- md5: abc123.dir\n  path: chest_xray\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(origin)], check=True)
    subprocess.run([*git, "-C", str(origin), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(origin), "commit", "-qm", "data"], check=True)
    proc = run_airflow_init(tmp_path, fake_airflow, XRAY_GIT_URL=str(origin), XRAY_GIT_BRANCH="main")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "repo" / "data" / "chest_xray.dvc").read_text().startswith("outs:")
    assert "data version abc123.dir" in proc.stdout
    upstream = subprocess.run(["git", "-C", str(tmp_path / "repo"), "rev-parse", "--abbrev-ref", "@{u}"],
                              capture_output=True, text=True).stdout.strip()
    assert upstream == "origin/main"  # so the DAG's detect task `git pull`s new data versions


def test_airflow_init_refuses_without_admin_password(tmp_path, fake_airflow):
    proc = run_airflow_init(tmp_path, fake_airflow, AIRFLOW_ADMIN_PASSWORD="")
    assert proc.returncode != 0 and "AIRFLOW_ADMIN_PASSWORD" in proc.stderr


# ----------------------------------------------------------------------------- health check
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        status = int(self.path.strip("/") or 200)
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("path,accept,healthy", [
    ("/200", "200", True), ("/503", "200", False), ("/503", "200,503", True), ("/500", "200,503", False),
])
def test_healthcheck_script(http_server, path, accept, healthy):
    proc = subprocess.run([sys.executable, str(REPO / "docker/healthcheck.py"), http_server + path,
                           "--accept", accept], capture_output=True, text=True, timeout=30)
    assert (proc.returncode == 0) == healthy, proc.stderr


def test_healthcheck_script_unreachable():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "docker/healthcheck.py"), f"http://127.0.0.1:{free_port()}/",
                           "--timeout", "2"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "unhealthy" in proc.stderr
    assert time.monotonic() - started < 10


# ----------------------------------------------------------------------------- .env generator
def test_gen_env_writes_fresh_secrets_that_compose_accepts(tmp_path):
    out = tmp_path / ".env"
    proc = subprocess.run(["bash", str(REPO / "docker/gen-env.sh"), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in out.read_text().splitlines() if line and not line.startswith("#"))
    assert not [k for k, v in values.items() if v.startswith("change-me")]
    from cryptography.fernet import Fernet

    Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # a valid key, or this raises
    # a second run never overwrites secrets in use
    again = subprocess.run(["bash", str(REPO / "docker/gen-env.sh"), str(out)], capture_output=True, text=True)
    assert again.returncode != 0 and "not overwriting" in again.stderr
    if shutil.which("docker-compose"):
        check = subprocess.run(["docker-compose", "--project-directory", str(REPO), "-f",
                                str(REPO / "docker-compose.yaml"), "--env-file", str(out), "config", "--quiet"],
                               capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
        assert check.returncode == 0, check.stderr


def test_drift_reader_role_selects_the_drift_columns_and_writes_nothing(postgres_cluster, tmp_path):
    """Issue 25 item 7: the drift DAG reads the site's database as `web_reader`, created by
    init-databases.sh and granted, after the site's migrations (docker/web/grant_reader.py), SELECT
    on the columns the drift report reads, and nothing else: no writes, no logins or sessions."""
    c = postgres_cluster
    creds = {"airflow": "pw-airflow-0123456789", "mlflow": "pw-mlflow-0123456789", "web": "pw-web-0123456789",
             "web_reader": "pw-reader-0123456789"}
    env = {"PATH": os.environ["PATH"], "POSTGRES_USER": "postgres", "PGHOST": c["socket"], "PGPORT": str(c["port"]),
           "AIRFLOW_DB_PASSWORD": creds["airflow"], "MLFLOW_DB_PASSWORD": creds["mlflow"],
           "WEB_DB_PASSWORD": creds["web"], "WEB_DB_READER_PASSWORD": creds["web_reader"]}
    argv = ["bash", str(REPO / "docker/postgres/init-databases.sh")]
    if c["as_user"]:
        argv = [*c["as_user"], "env", *[f"{k}={v}" for k, v in env.items()], *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the site's tables, made by its migrations as the owner, then the reader's grants (web-init)
    owner_url = f"postgres://web:{creds['web']}@127.0.0.1:{c['port']}/web"
    site = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": f"{REPO}:{REPO / 'django_app'}",
            "DATABASE_URL": owner_url, "XRAY_WEB_DATA_DIR": str(tmp_path / "site"), "DJANGO_ENV": "development",
            "WEB_DB_READER_USER": "web_reader"}
    for cmd in (["django_app/manage.py", "migrate", "--noinput"], ["docker/web/grant_reader.py"]):
        proc = subprocess.run([sys.executable, *cmd], cwd=REPO, env=site, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    ok = psql_tcp(c, "web", creds["web"], "web",
                  "WITH u AS (INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
                  "email, is_staff, is_active, date_joined) VALUES ('x', false, 'doc', '', '', '', false, true, "
                  "now()) RETURNING id) INSERT INTO diagnosis_refusal (created, owner_id, source, file_format, "
                  "size_bytes, reason, gate_score, model_name, model_version) "
                  "SELECT now(), id, 'web', 'png', 1, 'a drawing', 0.5, 'm', '1' FROM u RETURNING 1")
    assert ok.returncode == 0, ok.stderr
    # the drift DAG's own query, through Django, as the reader
    reader_url = f"postgres://web_reader:{creds['web_reader']}@127.0.0.1:{c['port']}/web"
    query = ("import django, datetime as d; django.setup(); from diagnosis import monitoring; "
             "now = d.datetime.now(d.timezone.utc); "
             "print(len(monitoring.records(now - d.timedelta(days=1), now + d.timedelta(days=1))))")
    proc = subprocess.run([sys.executable, "-c", query], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**site, "DATABASE_URL": reader_url, "DJANGO_SETTINGS_MODULE": "xray_site.settings"})
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "1", proc.stdout + proc.stderr
    # the site tasks' reads (confirmed cases, realised performance, the shadow wait's evidence) as the reader
    ok = psql_tcp(c, "web", creds["web"], "web",
                  "WITH d AS (INSERT INTO diagnosis_diagnosis (id, owner_id, created, source, original_name, "
                  "file_format, size_bytes, sha256, width, height, image, heatmap, heatmap_empty, label, probability, "
                  "threshold, model_name, model_version, model_run_id, warning, logit, patient_key) SELECT "
                  "gen_random_uuid(), id, now(), 'web', 'upload.png', 'PNG', 1, 'x', 1, 1, 'xrays/1/a/image.png', '', "
                  "false, 'PNEUMONIA', 0.9, 0.5, 'm', '1', '', '', 2.0, '' FROM auth_user WHERE username = 'doc' "
                  "RETURNING id, owner_id) INSERT INTO diagnosis_confirmation (diagnosis_id, label, by_id, created, "
                  "updated, note, adjudicated_label, adjudication_note) SELECT id, 'PNEUMONIA', owner_id, now(), now(), "
                  "'', '', '' FROM d RETURNING 1")
    assert ok.returncode == 0, ok.stderr
    site_reads = ("import django; django.setup(); from diagnosis import local_cases, shadow; "
                  "print(len(local_cases.cases(share=None)), len(local_cases.realised()), "
                  "shadow.evidence('m', 2)['answered'])")
    proc = subprocess.run([sys.executable, "-c", site_reads], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**site, "DATABASE_URL": reader_url, "DJANGO_SETTINGS_MODULE": "xray_site.settings"})
    assert proc.returncode == 0 and proc.stdout.split()[-3:] == ["1", "1", "0"], proc.stdout + proc.stderr
    for sql in ("UPDATE diagnosis_refusal SET reason = 'x'",
                "DELETE FROM diagnosis_refusal", "SELECT password FROM auth_user", "SELECT * FROM django_session",
                "SELECT image FROM diagnosis_diagnosis", "SELECT note FROM diagnosis_confirmation",
                "SELECT heatmap FROM diagnosis_shadowanswer", "CREATE TABLE t (x int)"):
        denied = psql_tcp(c, "web_reader", creds["web_reader"], "web", sql)
        assert denied.returncode != 0 and ("permission denied" in denied.stderr
                                           or "read-only transaction" in denied.stderr), (sql, denied.stderr)
    assert psql_tcp(c, "web_reader", creds["web_reader"], "airflow", "SELECT 1").returncode != 0
