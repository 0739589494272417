"""Placeholder or weak secrets are refused at start, in every service (issue 11, item 3).

- docker/check_secrets.py (entry point of the mlflow, airflow-* and web containers) refuses
  .env.example as it stands, and accepts what docker/gen-env.sh writes;
- docker/weak_secret.sh (postgres' entry point, no Python there) applies the same rules;
- Django in production refuses a placeholder / short DJANGO_SECRET_KEY (not only a W009 warning).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_secrets", REPO / "docker" / "check_secrets.py")
check_secrets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_secrets)


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def compose_like_env(values: dict[str, str]) -> dict[str, str]:
    """The secret-bearing variables as docker-compose.yaml hands them to the containers."""
    return {
        "DJANGO_SECRET_KEY": values["DJANGO_SECRET_KEY"],
        "AIRFLOW__CORE__FERNET_KEY": values["AIRFLOW_FERNET_KEY"],
        "AIRFLOW__API_AUTH__JWT_SECRET": values["AIRFLOW_JWT_SECRET"],
        "AIRFLOW__API__SECRET_KEY": values["AIRFLOW_API_SECRET_KEY"],
        "MLFLOW_TRACKING_PASSWORD": values["MLFLOW_TRAINER_PASSWORD"],
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
            f"postgresql+psycopg2://airflow:{values['AIRFLOW_DB_PASSWORD']}@postgres:5432/airflow",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://:{values['REDIS_PASSWORD']}@redis:6379/0",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "/opt/airflow/auth/passwords.json",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    }


def test_env_example_as_is_is_refused():
    found = check_secrets.problems(compose_like_env(env_file(REPO / ".env.example")))
    joined = "\n".join(found)
    for name in ("DJANGO_SECRET_KEY", "FERNET_KEY", "JWT_SECRET", "API__SECRET_KEY", "MLFLOW_TRACKING_PASSWORD",
                 "SQL_ALCHEMY_CONN", "BROKER_URL"):
        assert name in joined, joined
    assert "PASSWORDS_FILE" not in joined and "TRACKING_URI" not in joined


def test_generated_env_is_accepted(tmp_path):
    out = tmp_path / ".env"
    subprocess.run(["bash", str(REPO / "docker/gen-env.sh"), str(out)], check=True, capture_output=True)
    assert check_secrets.problems(compose_like_env(env_file(out))) == []
    assert not [v for v in env_file(out).values() if "change-me" in v]


@pytest.mark.parametrize("value,ok", [
    ("change-me-postgres", False), ("password1234", False), ("short-but-rand0m", True),
    ("aaaaaaaaaaaaaaaaaaaaaaaa", False), ("S0meRandom-Token_value-xyz", True), ("admin", False)])
def test_rules_python_and_shell_agree(value, ok):
    assert (check_secrets.weakness(value) is None) is ok
    sh = subprocess.run(["bash", "-c", f'source {REPO}/docker/weak_secret.sh; weak_secret X "$1"', "_", value],
                        capture_output=True, text=True)
    assert (sh.returncode != 0) is ok, sh.stderr


def test_fernet_key_must_be_a_key():
    assert check_secrets.problems({"AIRFLOW__CORE__FERNET_KEY": "this-is-long-but-not-a-fernet-key"})
    import base64
    assert not check_secrets.problems({"AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode()})


def test_checker_exits_78_and_entrypoints_run_it():
    env = {"PATH": os.environ["PATH"], "DJANGO_SECRET_KEY": "change-me-django-secret-key"}
    proc = subprocess.run([sys.executable, str(REPO / "docker/check_secrets.py")], env=env, capture_output=True, text=True)
    assert proc.returncode == 78 and "DJANGO_SECRET_KEY" in proc.stderr
    assert "check_secrets.py" in (REPO / "docker/entrypoint.sh").read_text()
    assert "/opt/xray/docker/entrypoint.sh" in (REPO / "Dockerfile").read_text()
    assert "weak_secret" in (REPO / "docker/postgres/secure-entrypoint.sh").read_text()


@pytest.mark.parametrize("key,ok", [("change-me-django-secret-key", False), ("x" * 60, False),
                                    ("k3Y-" + "abcdefghij" * 6, True)])
def test_django_production_refuses_weak_secret_key(key, ok):
    env = {**os.environ, "DJANGO_ENV": "production", "DJANGO_SECRET_KEY": key, "DJANGO_ALLOWED_HOSTS": "localhost",
           "DJANGO_SETTINGS_MODULE": "xray_site.settings"}
    proc = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env,
                          capture_output=True, text=True, cwd=REPO)
    assert (proc.returncode == 0) is ok, proc.stderr[-500:]
    if not ok:
        assert "DJANGO_SECRET_KEY" in proc.stderr


GOOD = "S0meRandom-Token_value-xyz"


def run_sh(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    # POSIX sh, as the MinIO and mc images have no bash
    return subprocess.run(["sh", str(REPO / script), *args], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "XRAY_WEAK_SECRET_SH": str(REPO / "docker/weak_secret.sh"),
                               **env})


@pytest.mark.parametrize("password", ["change-me-minio-root", "minioadmin", "short"])
def test_minio_refuses_a_placeholder_root_password(password):
    """Issue 25 item 10: MinIO starts only with a real root password."""
    proc = run_sh("docker/minio/secure-entrypoint.sh", {"MINIO_ROOT_PASSWORD": password}, "echo", "started")
    assert proc.returncode == 78 and "MINIO_ROOT_PASSWORD" in proc.stderr and "started" not in proc.stdout
    ok = run_sh("docker/minio/secure-entrypoint.sh", {"MINIO_ROOT_PASSWORD": GOOD}, "echo", "started")
    assert ok.returncode == 0 and ok.stdout.strip() == "started", ok.stderr


@pytest.mark.parametrize("weak", ["MINIO_ROOT_PASSWORD", "MLFLOW_S3_SECRET_ACCESS_KEY", "DVC_S3_SECRET_ACCESS_KEY"])
def test_bucket_job_refuses_placeholder_secrets(weak):
    """The bucket job refuses the root password and the two service keys it creates, before any call."""
    env = {"MINIO_ROOT_USER": "minio-admin", "MINIO_ROOT_PASSWORD": GOOD, "MLFLOW_S3_ACCESS_KEY_ID": "xray-mlflow",
           "MLFLOW_S3_SECRET_ACCESS_KEY": GOOD + "1", "DVC_S3_ACCESS_KEY_ID": "xray-dvc",
           "DVC_S3_SECRET_ACCESS_KEY": GOOD + "2", weak: "change-me-x"}
    proc = run_sh("docker/minio/create-buckets.sh", env)
    assert proc.returncode == 78 and weak in proc.stderr, proc.stderr


def test_minio_services_run_the_checks():
    import yaml

    services = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]
    assert services["minio"]["entrypoint"][-1] == "/docker/minio/secure-entrypoint.sh"
    for name in ("minio", "createbuckets"):
        mounts = services[name]["volumes"]
        assert "./docker/weak_secret.sh:/docker/weak_secret.sh:ro" in mounts, name
