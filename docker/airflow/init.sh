#!/usr/bin/env bash
# One-shot run by the `airflow-init` service before any other Airflow component starts:
#   1. migrate Airflow's metadata database (PostgreSQL) to this Airflow version;
#   2. write the admin login for Airflow 3's SimpleAuthManager from the environment.
# Idempotent: safe on every `docker compose up` (migrate is a no-op when up to date; the
# password file is rewritten from .env, so changing AIRFLOW_ADMIN_PASSWORD there and
# re-running `docker compose up airflow-init` changes the password).
set -euo pipefail

: "${AIRFLOW_ADMIN_USER:?AIRFLOW_ADMIN_USER is not set (see .env.example)}"
: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set (see .env.example)}"
: "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?set by docker-compose.yaml}"

echo "airflow-init: $(airflow version 2>/dev/null | tail -1) — migrating the metadata database"
airflow db migrate

echo "airflow-init: writing the login for '${AIRFLOW_ADMIN_USER}' (role admin)"
python - <<'PY'
import json, os
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
os.makedirs(os.path.dirname(path), exist_ok=True)
tmp = path + ".tmp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
    f.write("\n")
os.replace(tmp, path)
PY

mkdir -p "${AIRFLOW_HOME:-/opt/airflow}/logs"

# The git + DVC repository the DAG pulls data versions into (XRAY_REPO, a named volume).
#  - XRAY_GIT_URL set: a clone of the project repository; the DAG's `detect` task runs
#    `git pull` there, so a data engineer's `git push` of a new data/chest_xray.dvc is seen.
#  - unset: seeded from the data pointer baked into the image, re-synced on every init, so
#    rebuilding the image and re-running airflow-init publishes a new pointer.
REPO="${XRAY_REPO:-/opt/xray-repo}"
APP="${APP_HOME:-/opt/xray}"
gitc() { git -C "$REPO" -c user.name="airflow-init" -c user.email="airflow-init@localhost" "$@"; }
if [[ -n "${XRAY_GIT_URL:-}" ]]; then
    if [[ ! -d "$REPO/.git" ]]; then
        echo "airflow-init: cloning the project repository into $REPO (branch ${XRAY_GIT_BRANCH:-main})"
        git clone --quiet --branch "${XRAY_GIT_BRANCH:-main}" "$XRAY_GIT_URL" "$REPO"
    else
        gitc pull --ff-only --quiet || echo "airflow-init: git pull failed; the DAG will retry" >&2
    fi
else
    echo "airflow-init: XRAY_GIT_URL unset: data pointer from the image ($APP) -> $REPO"
    mkdir -p "$REPO/.dvc" "$REPO/data"
    [[ -d "$REPO/.git" ]] || gitc init --quiet --initial-branch=main
    cp "$APP/.dvc/config" "$REPO/.dvc/config"
    for f in .dvcignore dvc.yaml params.yaml data/.gitignore; do
        if [[ -f "$APP/$f" ]]; then cp "$APP/$f" "$REPO/$f"; fi
    done
    shopt -s nullglob
    for f in "$APP"/data/*.dvc; do cp "$f" "$REPO/data/"; done
    printf '/data/chest_xray\n/.dvc/cache\n/.dvc/tmp\n/.dvc/config.local\n' > "$REPO/.gitignore"
    gitc add -A
    gitc diff --cached --quiet || gitc commit --quiet -m "data pointer from image ${XRAY_IMAGE_TAG:-}"
fi
if [[ -f "$REPO/data/chest_xray.dvc" ]]; then
    echo "airflow-init: data version $(grep -m1 -E "md5|hash" "$REPO/data/chest_xray.dvc" | awk '{print $NF}')"
else
    echo "airflow-init: WARNING: no data/chest_xray.dvc yet: publish a dataset (make data) before the DAG runs" >&2
fi
echo "airflow-init: done"
