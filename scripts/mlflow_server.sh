#!/usr/bin/env bash
# Start the MLflow tracking server: UI + REST API + proxied artifact store (--serve-artifacts).
#
#   scripts/mlflow_server.sh              foreground (docker, `make mlflow`); Ctrl-C stops it
#   scripts/mlflow_server.sh --background start detached, wait until /health answers, write a pid file
#   scripts/mlflow_server.sh --stop       stop the server started with --background
#   scripts/mlflow_server.sh --status     say whether it answers
#
# Local default: SQLite file + artifact directory under <repo>/.mlflow (both git-ignored).
# Production: set MLFLOW_BACKEND_STORE_URI=postgresql://user:pw@host:5432/mlflow and
# MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/prefix (+ MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY for MinIO; read by boto3 inside the server).
#
# Environment (all optional):
#   MLFLOW_HOST (127.0.0.1; 0.0.0.0 in a container)   MLFLOW_PORT (5000)   MLFLOW_WORKERS (2)
#   MLFLOW_DIR (<repo>/.mlflow: home of the local defaults, the pid file and the log)
#   MLFLOW_BACKEND_STORE_URI (sqlite:///$MLFLOW_DIR/mlflow.db); postgresql://... is run with the
#       psycopg2 driver (rewritten to postgresql+psycopg2://)
#   MLFLOW_ARTIFACTS_DESTINATION ($MLFLOW_DIR/artifacts)
#   MLFLOW_ALLOWED_HOSTS (comma list of Host headers accepted; needed when clients reach the server
#       by a name that is not localhost / a private IP, e.g. "mlflow,mlflow:5000" in docker compose)
#   MLFLOW_DB_WAIT_S (60): how long to wait for a PostgreSQL backend to accept connections
#   MLFLOW_START_TIMEOUT_S (90): --background waits this long for /health
#   MLFLOW_AUTH (0): 1 = MLflow's basic-auth app, users from the environment (scripts/mlflow_auth.py)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION (false here; MLflow's own default is true): the GenAI job
#       runner (huey workers) is not used by this project and costs three processes
set -euo pipefail
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLFLOW_DIR="${MLFLOW_DIR:-$REPO/.mlflow}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-2}"
BACKEND="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$MLFLOW_DIR/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$MLFLOW_DIR/artifacts}"
# SQLAlchemy 2.1 maps a bare postgresql:// to the psycopg (v3) driver; the project pins psycopg2-binary.
case "$BACKEND" in
  postgresql://*) BACKEND="postgresql+psycopg2://${BACKEND#postgresql://}" ;;
  postgres://*)   BACKEND="postgresql+psycopg2://${BACKEND#postgres://}" ;;
esac
PIDFILE="$MLFLOW_DIR/server.pid"
LOGFILE="$MLFLOW_DIR/server.log"

# The project's venv when there is one (local), else whatever is on PATH (docker image).
if [[ -x "$REPO/.venv/bin/mlflow" ]]; then
  MLFLOW="$REPO/.venv/bin/mlflow"; PYTHON="$REPO/.venv/bin/python"
else
  MLFLOW="$(command -v mlflow)"; PYTHON="$(command -v python3 || command -v python)"
fi

# Clients connect to 127.0.0.1 when the server binds every interface.
probe_host="$HOST"; [[ "$HOST" == "0.0.0.0" || "$HOST" == "::" ]] && probe_host=127.0.0.1
health_url="http://$probe_host:$PORT/health"

healthy() { "$PYTHON" - "$health_url" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

redact() { sed -E 's#(://[^:/@]+:)[^@]*@#\1***@#' <<<"$1"; }

wait_for_db() {
  # A fresh `docker compose up` starts PostgreSQL and MLflow together: wait for the database
  # instead of crashing (MLflow exits at once when its backend store is unreachable).
  [[ "$BACKEND" == postgresql* ]] || return 0
  "$PYTHON" - "$BACKEND" "${MLFLOW_DB_WAIT_S:-60}" <<'EOF'
import sys, time
import sqlalchemy
uri, wait_s = sys.argv[1], float(sys.argv[2])
engine = sqlalchemy.create_engine(uri, pool_pre_ping=True)
deadline = time.monotonic() + wait_s
while True:
    try:
        with engine.connect():
            break
    except Exception as exc:  # noqa: BLE001 - any connection problem means "not yet"
        if time.monotonic() > deadline:
            sys.exit(f"mlflow_server: database not reachable after {wait_s:.0f}s: {exc.__class__.__name__}")
        time.sleep(1)
EOF
}

server_args=(
  server
  --backend-store-uri "$BACKEND"
  --serve-artifacts
  --artifacts-destination "$ARTIFACTS"
  --default-artifact-root "mlflow-artifacts:/"
  --host "$HOST" --port "$PORT" --workers "$WORKERS"
)
[[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]] && server_args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
[[ "${MLFLOW_AUTH:-0}" == 1 ]] && server_args+=(--app-name basic-auth)

prepare() {
  mkdir -p "$MLFLOW_DIR"
  [[ "$ARTIFACTS" == *://* ]] || mkdir -p "$ARTIFACTS"
  wait_for_db
  if [[ "${MLFLOW_AUTH:-0}" == 1 ]]; then
    : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?MLFLOW_AUTH=1 needs MLFLOW_FLASK_SERVER_SECRET_KEY (the auth app CSRF key)}"
    export MLFLOW_AUTH_CONFIG_PATH="$MLFLOW_DIR/basic_auth.ini"
    # the ini names mlflow_auth:authenticate (the reader's no-write rule) as the auth function
    export PYTHONPATH="$REPO/scripts${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" "$REPO/scripts/mlflow_auth.py" "$MLFLOW_AUTH_CONFIG_PATH" "$MLFLOW_DIR"
  fi
  echo "mlflow_server: backend $(redact "$BACKEND"), artifacts $ARTIFACTS, http://$HOST:$PORT" >&2
}

case "${1:-}" in
  ""|--foreground)
    prepare
    exec "$MLFLOW" "${server_args[@]}"
    ;;
  --background)
    if healthy; then echo "mlflow_server: already answering at $health_url" >&2; exit 0; fi
    prepare
    # setsid: the server gets its own process group, so --stop can end all its workers.
    setsid "$MLFLOW" "${server_args[@]}" >>"$LOGFILE" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    deadline=$(( $(date +%s) + ${MLFLOW_START_TIMEOUT_S:-90} ))
    until healthy; do
      if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "mlflow_server: server exited; last log lines:" >&2; tail -n 20 "$LOGFILE" >&2; exit 1
      fi
      if (( $(date +%s) > deadline )); then echo "mlflow_server: no answer at $health_url (see $LOGFILE)" >&2; exit 1; fi
      sleep 1
    done
    echo "mlflow_server: up at http://$probe_host:$PORT (pid $(cat "$PIDFILE"), log $LOGFILE)" >&2
    ;;
  --stop)
    if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      pid="$(cat "$PIDFILE")"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
      echo "mlflow_server: stopped (pid $pid)" >&2
    else
      echo "mlflow_server: not running (no live pid in $PIDFILE)" >&2
    fi
    rm -f "$PIDFILE"
    ;;
  --status)
    if healthy; then echo "mlflow_server: up at http://$probe_host:$PORT"; else echo "mlflow_server: down ($health_url)"; exit 1; fi
    ;;
  *)
    echo "usage: $0 [--foreground|--background|--stop|--status]" >&2; exit 2
    ;;
esac
