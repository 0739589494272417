#!/usr/bin/env bash
# The local stack: what `make run` / `make stop` do.
#
#   scripts/stack.sh up        data -> MLflow -> Airflow -> one retraining run of the DAG -> web site
#   scripts/stack.sh down      stop everything `up` started (no process left behind)
#   scripts/stack.sh status    what runs, where, and the newest DAG run
#
# `up` on a fresh machine (the venv installed by `make setup`):
#   1. imports DATA into DVC as data/chest_xray (scripts/import_data.sh: dvc add, git commit of the
#      pointer, dvc push); QUICK=1 imports a seeded subset of QUICK_PER_CLASS images per class;
#   2. starts MLflow (scripts/mlflow_server.sh --background: SQLite + ./.mlflow);
#   3. starts Airflow 3 on SQLite (AIRFLOW_HOME=./.airflow, LocalExecutor): api-server, scheduler,
#      dag-processor, each in its own session with a pid file;
#   4. triggers one run of the DAG (`force`: it trains even when the data did not change) and waits,
#      printing each task's state; QUICK=1 passes tiny training overrides;
#   5. starts the web site under gunicorn (scripts/web_server.sh), creates the doctor account,
#      and prints the URLs and logins.
# Idempotent: a service whose pid file names a live process that answers its health check is left
# alone; a DAG run already in flight is waited for, one that already succeeded is not repeated
# (STACK_RETRAIN=1 forces a new one). Everything lives under .local/ (logs, pids, secrets),
# .airflow/ and .mlflow/, all git-ignored.
#
# Environment (all optional):
#   DATA (../shared/datasets/chest_xray)  QUICK (empty; 1 = quick mode)  QUICK_PER_CLASS (150)
#   STACK_HOST (127.0.0.1)  MLFLOW_PORT (5000)  AIRFLOW_PORT (8080)  WEB_PORT (8000)
#   STACK_DIR (<repo>/.local)  AIRFLOW_HOME (<repo>/.airflow)
#   STACK_SKIP_DATA (0: 1 = keep the current data version)  STACK_SKIP_DAG (0: 1 = start services only)
#   STACK_RETRAIN (0)  STACK_DAG_TIMEOUT_S (7200; quick 1200)  STACK_QUICK_OVERRIDES (see below)
#   DOCTOR_USERNAME (doctor)  DOCTOR_PASSWORD (generated once, kept in .local/secrets/doctor_password)
#   AIRFLOW_ADMIN_USER (admin)  AIRFLOW_ADMIN_PASSWORD (generated once, .local/secrets/airflow_password)
#   STACK_WEB_WORKERS (2)  STACK_OVERRIDES (JSON list of params overrides for a full run, [])
#   STACK_AIRFLOW_SCHEDULE (0: 1 = the scheduler also creates the @daily runs)  XRAY_DAG_ID (xray_retrain)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# ------------------------------------------------------------------------------------ settings
STACK_DIR="${STACK_DIR:-$REPO/.local}"
LOGS="$STACK_DIR/logs"
PIDS="$STACK_DIR/pids"
SECRETS="$STACK_DIR/secrets"
HOST="${STACK_HOST:-127.0.0.1}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
WEB_PORT="${WEB_PORT:-8000}"
DATA="${DATA:-$REPO/../shared/datasets/chest_xray}"
QUICK="${QUICK:-}"
[[ "$QUICK" == "0" || "$QUICK" == "false" ]] && QUICK=""
QUICK_PER_CLASS="${QUICK_PER_CLASS:-150}"
DAG_ID="${XRAY_DAG_ID:-xray_retrain}"
PY="$REPO/.venv/bin/python"
VENV_BIN="$REPO/.venv/bin"

# Quick mode: one short epoch on small images (DAG run overrides: training-side keys only). The
# promotion floors are relaxed so that this demo model can become champion: a DAG run may not
# override the policy, so they go into a params file the Airflow processes read ($XRAY_PARAMS,
# written by quick_params); a real run (no QUICK) uses params.yaml's policy untouched.
QUICK_OVERRIDES_DEFAULT='["train.epochs=1","train.warmup_epochs=0","preprocess.image_size=64","train.batch_size=16","train.patience=1"]'
QUICK_POLICY='promotion.floors.auc=0.5 promotion.floors.sensitivity=0.5 promotion.floors.specificity=0.0 promotion.stress_floors.auc=0.5 promotion.stress_floors.sensitivity=0.3 promotion.stress_floors.specificity=0.0 evaluate.stress_images=48'

export AIRFLOW_HOME="${AIRFLOW_HOME:-$REPO/.airflow}"
export MLFLOW_TRACKING_URI="http://$HOST:$MLFLOW_PORT"
export MLFLOW_HOST="$HOST" MLFLOW_PORT
export PATH="$VENV_BIN:$PATH"
# The checkout every process acts on, said explicitly: `pipeline` is installed in the venv (pip
# install -e), possibly from another checkout sharing that venv, so its own location is no guide.
export XRAY_REPO="${XRAY_REPO:-$REPO}"
export XRAY_PARAMS="${XRAY_PARAMS:-$REPO/params.yaml}"
export XRAY_CACHE_DIR="${XRAY_CACHE_DIR:-$REPO/.cache/preprocess}"
export XRAY_MODEL_CACHE_DIR="${XRAY_MODEL_CACHE_DIR:-$REPO/.cache/models}"
export XRAY_RUNS_DIR="${XRAY_RUNS_DIR:-$REPO/runs}"

log()  { printf '\033[1m[stack %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { printf '\033[1;33m[stack %s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '\033[1;31m[stack] error: %s\033[0m\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------------------------ helpers
# http_ok URL [accepted statuses]: 0 when URL answers with one of them (default 200)
http_ok() {
  "$PY" - "$1" "${2:-200}" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
url, ok = sys.argv[1], {int(s) for s in sys.argv[2].split(",")}
try:
    with urllib.request.urlopen(url, timeout=3) as r:
        status = r.status
except urllib.error.HTTPError as e:
    status = e.code
sys.exit(0 if status in ok else 1)
EOF
}

http_get() {  # body of URL whatever the status, "" when unreachable
  "$PY" - "$1" <<'EOF' 2>/dev/null || true
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.read().decode()[:300])
except urllib.error.HTTPError as e:
    print(e.read().decode()[:300])
EOF
}

port_busy() {  # something listens on HOST:PORT
  "$PY" -c 'import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2])))==0 else 1)' "$HOST" "$1"
}

# pid_alive PIDFILE: the process lives AND works in this repository (a pid reused by another
# program after a crash or reboot does not count, so `down` never signals a stranger)
pid_alive() {
  local pid cwd
  [[ -f "$1" ]] || return 1
  pid="$(cat "$1" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
  [[ -z "$cwd" || "$cwd" == "$REPO" || "$cwd" == "$REPO"/* ]]
}

# secret NAME [value]: read (or create once, mode 600) a generated secret under .local/secrets
secret() {
  local f="$SECRETS/$1"
  if [[ ! -s "$f" ]]; then
    mkdir -p "$SECRETS"; chmod 700 "$SECRETS"
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_urlsafe(18))' > "$f")
  fi
  cat "$f"
}

# start NAME HEALTH_URL ACCEPT CMD...: run CMD in its own session (setsid), pid file, log file
start() {
  local name="$1" url="$2" accept="$3"; shift 3
  local pidf="$PIDS/$name.pid" logf="$LOGS/$name.log"
  if pid_alive "$pidf"; then
    log "$name already running (pid $(cat "$pidf"))"; return 0
  fi
  rm -f "$pidf"
  if [[ -n "$url" ]] && port_busy "$(sed -E 's#.*:([0-9]+).*#\1#' <<<"${url#http://}")"; then
    die "$name: $url is already taken by a process this stack did not start (another engineer's server?). Pick another port (see scripts/stack.sh header) or stop it."
  fi
  mkdir -p "$PIDS" "$LOGS"
  echo "==== $(date -u +%FT%TZ) $*" >> "$logf"
  # the new session's leader writes its own pid (setsid forks when called from a process-group
  # leader, so $! is not always the service); `down` ends the whole session by this id
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pidf" "$@" >> "$logf" 2>&1 < /dev/null &
  local i
  for i in $(seq 1 50); do [[ -s "$pidf" ]] && break; sleep 0.1; done
  [[ -s "$pidf" ]] || die "$name did not start (log: $logf)"
  log "$name started (pid $(cat "$pidf"), log ${logf#$REPO/})"
}

# wait_healthy NAME URL ACCEPT TIMEOUT_S
wait_healthy() {
  local name="$1" url="$2" accept="$3" timeout="$4" pidf="$PIDS/$1.pid"
  local deadline=$(( $(date +%s) + timeout ))
  until http_ok "$url" "$accept"; do
    if [[ -f "$pidf" ]] && ! pid_alive "$pidf"; then
      tail -n 30 "$LOGS/$name.log" >&2 || true
      die "$name exited while starting (log: $LOGS/$name.log)"
    fi
    (( $(date +%s) < deadline )) || die "$name: no healthy answer at $url after ${timeout}s (log: $LOGS/$name.log)"
    sleep 2
  done
}

# stop NAME: TERM the whole session of the process, wait, then KILL what is left
stop() {
  local name="$1" pidf="$PIDS/$1.pid" pid sid pids
  [[ -f "$pidf" ]] || return 0
  pid="$(cat "$pidf")"
  if pid_alive "$pidf"; then
    sid="$pid"   # started with setsid: the session id is the leader's pid
    session_pids() { ps -e -o pid=,sid= | awk -v s="$sid" '$2 == s {print $1}'; }
    pids="$(session_pids)"
    [[ -n "$pids" ]] && kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 40); do
      [[ -z "$(session_pids)" ]] && break
      sleep 0.5
    done
    pids="$(session_pids)"
    if [[ -n "$pids" ]]; then
      warn "$name: killing what did not stop in 20s: $pids"
      kill -KILL $pids 2>/dev/null || true
    fi
    log "$name stopped"
  fi
  rm -f "$pidf"
}

airflow_env() {
  # Airflow 3 on SQLite, LocalExecutor, only this project's DAG; scheduled runs off (the stack
  # triggers its own run; STACK_AIRFLOW_SCHEDULE=1 turns the @daily schedule back on).
  export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__EXECUTOR=LocalExecutor
  export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
  export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW_ADMIN_USER:-admin}:admin"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/passwords.json"
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://$HOST:$AIRFLOW_PORT/execution/"
  export AIRFLOW__API__BASE_URL="http://$HOST:$AIRFLOW_PORT"
  export AIRFLOW__API__HOST="$HOST" AIRFLOW__API__PORT="$AIRFLOW_PORT" AIRFLOW__API__WORKERS=1
  export AIRFLOW__API_AUTH__JWT_SECRET="$(secret airflow_jwt_secret)"
  export AIRFLOW__API__SECRET_KEY="$(secret airflow_api_secret)"
  export AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="$([[ "${STACK_AIRFLOW_SCHEDULE:-0}" == 1 ]] && echo True || echo False)"
  export AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=False
  export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30
  export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$AIRFLOW_HOME/logs"
  # the scheduler's task-log server takes 8793 by default; on a shared machine another Airflow may
  # hold it, so take a free port then (the api-server reads local task logs from files anyway)
  if [[ -z "${AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT:-}" ]]; then
    local f="$AIRFLOW_HOME/log_server_port"
    if [[ ! -s "$f" ]] || { ! pid_alive "$PIDS/airflow-scheduler.pid" && port_busy "$(cat "$f")"; }; then
      mkdir -p "$AIRFLOW_HOME"
      if port_busy 8793; then "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' > "$f"; else echo 8793 > "$f"; fi
    fi
    export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT="$(cat "$f")"
  fi
  export AIRFLOW_ADMIN_USER="${AIRFLOW_ADMIN_USER:-admin}"
  export AIRFLOW_ADMIN_PASSWORD="${AIRFLOW_ADMIN_PASSWORD:-$(secret airflow_password)}"
}

doctor_env() {
  export DOCTOR_USERNAME="${DOCTOR_USERNAME:-doctor}"
  export DOCTOR_PASSWORD="${DOCTOR_PASSWORD:-$(secret doctor_password)}"
}

# ------------------------------------------------------------------------------------ steps
step_data() {
  if [[ "${STACK_SKIP_DATA:-0}" == 1 ]]; then
    log "data: STACK_SKIP_DATA=1, keeping the current data version"; return 0
  fi
  local src="$DATA"
  [[ -d "$src" ]] || die "dataset folder '$src' does not exist (set DATA=<folder with train/{NORMAL,PNEUMONIA}>)"
  if [[ -n "$QUICK" ]]; then
    # A seeded subset of QUICK_PER_CLASS images per class, as symlinks (import_data.sh copies
    # what they point to); the same subset every time, so a second `up` is no new data version.
    src="$STACK_DIR/quick-data"
    "$PY" - "$DATA" "$src" "$QUICK_PER_CLASS" <<'EOF'
import shutil, sys
from pathlib import Path
from pipeline import data   # the same seeded, patient-preserving subset the tests use
root, dest, n = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), int(sys.argv[3])
source = root / "train" if (root / "train").is_dir() else root
if dest.exists():
    shutil.rmtree(dest)
picked = data.link_subset(source, dest, n, 42)
if not picked:
    sys.exit(f"stack: no images under {source}")
print(f"    quick mode: {len(picked)} images (about {n} per class, whole patients) from {source}")
EOF
  fi
  log "data: importing $src into DVC (scripts/import_data.sh; log ${LOGS#$REPO/}/import-data.log)"
  if ! XRAY_GIT_PUSH="${XRAY_GIT_PUSH:-0}" scripts/import_data.sh "$src" > "$LOGS/import-data.log" 2>&1; then
    tail -n 25 "$LOGS/import-data.log" >&2
    die "data import failed (see above)"
  fi
  grep -E '"hash"|"nfiles"' "$LOGS/import-data.log" | tr -d ' ,"' | sed 's/^/    data version /' || true
}

step_mlflow() {
  local pidf="$REPO/.mlflow/server.pid"
  if pid_alive "$pidf" && http_ok "http://$HOST:$MLFLOW_PORT/health"; then
    log "mlflow already running (pid $(cat "$pidf"))"
  else
    port_busy "$MLFLOW_PORT" && die "port $MLFLOW_PORT is taken by a process this stack did not start; set MLFLOW_PORT=<free port>"
    log "mlflow: starting on $MLFLOW_TRACKING_URI"
    scripts/mlflow_server.sh --background
  fi
  mkdir -p "$LOGS"; ln -sfn "$REPO/.mlflow/server.log" "$LOGS/mlflow.log"
}

quick_params() {  # QUICK: params.yaml + QUICK_POLICY -> $STACK_DIR/quick-params.yaml, exported as XRAY_PARAMS
  [[ -n "$QUICK" ]] || return 0
  mkdir -p "$STACK_DIR"
  # shellcheck disable=SC2086
  "$PY" -c 'import sys, yaml; from pipeline import config
yaml.safe_dump(config.load_params(None, sys.argv[2:]), open(sys.argv[1], "w"), sort_keys=False)' \
    "$STACK_DIR/quick-params.yaml" $QUICK_POLICY
  export XRAY_PARAMS="$STACK_DIR/quick-params.yaml"
  log "quick mode: promotion policy relaxed in $XRAY_PARAMS ($QUICK_POLICY)"
}

step_airflow() {
  airflow_env
  quick_params   # before the Airflow processes start: they inherit XRAY_PARAMS
  mkdir -p "$AIRFLOW_HOME"
  # the admin login, written before the api-server starts (SimpleAuthManager reads this file)
  (umask 077; "$PY" -c 'import json,os,sys; json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, open(sys.argv[1],"w"))' \
     "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
  if ! pid_alive "$PIDS/airflow-scheduler.pid"; then
    log "airflow: migrating the metadata database ($AIRFLOW_HOME/airflow.db)"
    airflow db migrate > "$LOGS/airflow-db-migrate.log" 2>&1 || { tail -n 30 "$LOGS/airflow-db-migrate.log" >&2; die "airflow db migrate failed"; }
  fi
  start airflow-apiserver "http://$HOST:$AIRFLOW_PORT" "" airflow api-server --host "$HOST" --port "$AIRFLOW_PORT" --workers 1
  start airflow-scheduler "" "" airflow scheduler
  start airflow-dag-processor "" "" airflow dag-processor
  wait_healthy airflow-apiserver "http://$HOST:$AIRFLOW_PORT/api/v2/monitor/health" 200 180
  log "airflow: up at http://$HOST:$AIRFLOW_PORT"
}

step_dag() {
  if [[ "${STACK_SKIP_DAG:-0}" == 1 ]]; then log "dag: STACK_SKIP_DAG=1, not triggering"; return 0; fi
  local conf overrides timeout
  if [[ -n "$QUICK" ]]; then
    overrides="${STACK_QUICK_OVERRIDES:-$QUICK_OVERRIDES_DEFAULT}"
    timeout="${STACK_DAG_TIMEOUT_S:-1200}"
    log "dag: quick mode: overrides $overrides"
  else
    overrides="${STACK_OVERRIDES:-[]}"
    timeout="${STACK_DAG_TIMEOUT_S:-7200}"
  fi
  conf="{\"force\": true, \"overrides\": $overrides}"
  log "dag: one retraining cycle of '$DAG_ID' (progress below; the Airflow UI shows the same)"
  AIRFLOW_URL="http://$HOST:$AIRFLOW_PORT" AIRFLOW_USER="$AIRFLOW_ADMIN_USER" AIRFLOW_PASSWORD="$AIRFLOW_ADMIN_PASSWORD" \
    XRAY_DAG_ID="$DAG_ID" STACK_DAG_CONF="$conf" STACK_DAG_TIMEOUT_S="$timeout" \
    "$PY" scripts/stack_airflow.py run || die "the DAG run did not succeed; the services keep running so you can look (make stop to end)"
}

step_web() {
  doctor_env
  if pid_alive "$PIDS/web.pid"; then
    log "web already running (pid $(cat "$PIDS/web.pid"))"
    wait_healthy web "http://$HOST:$WEB_PORT/healthz" 200 60
    wait_champion
    return 0
  fi
  local manage=("$PY" django_app/manage.py)
  "${manage[@]}" migrate --noinput > "$LOGS/web-migrate.log" 2>&1 || { tail -n 30 "$LOGS/web-migrate.log" >&2; die "web: migrate failed"; }
  XRAY_DOCTOR_PASSWORD="$DOCTOR_PASSWORD" "${manage[@]}" create_doctor "$DOCTOR_USERNAME" --update >> "$LOGS/web-migrate.log" 2>&1 \
    || { tail -n 20 "$LOGS/web-migrate.log" >&2; die "web: create_doctor failed"; }
  # gunicorn reads WEB_BIND / WEB_WORKERS (django_app/gunicorn.conf.py)
  WEB_BIND="$HOST:$WEB_PORT" WEB_WORKERS="${STACK_WEB_WORKERS:-2}" \
    start web "http://$HOST:$WEB_PORT" "" scripts/web_server.sh
  wait_healthy web "http://$HOST:$WEB_PORT/healthz" 200 180
  wait_champion
}

wait_champion() {  # the workers load the champion in the background: say "up" once it answers
  local deadline=$(( $(date +%s) + ${STACK_CHAMPION_WAIT_S:-120} ))
  until http_ok "http://$HOST:$WEB_PORT/healthz?ready=1" 200; do
    if (( $(date +%s) >= deadline )); then
      log "web: no champion model loaded yet (/healthz tells why); the site says so until one is promoted"
      return 0
    fi
    sleep 2
  done
}

print_summary() {
  doctor_env; airflow_env
  local health
  health="$(http_get "http://$HOST:$WEB_PORT/healthz")"
  cat <<EOF

  The platform is up$([[ -n "$QUICK" ]] && echo " (QUICK mode: a demo model trained on a few hundred images for one epoch, NOT for clinical use)").

    Web site (doctors)       http://$HOST:$WEB_PORT/      login: $DOCTOR_USERNAME / $DOCTOR_PASSWORD
    MLflow UI (reviewers)    http://$HOST:$MLFLOW_PORT/
    Airflow UI (operators)   http://$HOST:$AIRFLOW_PORT/      login: $AIRFLOW_ADMIN_USER / $AIRFLOW_ADMIN_PASSWORD

    Health of the site:      ${health:-"(no answer)"}
    Logs:                    ${LOGS#$REPO/}/   (web.log, mlflow.log, airflow-*.log; task logs in ${AIRFLOW_HOME#$REPO/}/logs)
    Stop everything:         make stop

EOF
}

# ------------------------------------------------------------------------------------ commands
cmd_up() {
  [[ -x "$PY" ]] || die "no virtual environment at .venv: run 'make setup' (make run does it for you)"
  for f in scripts/mlflow_server.sh scripts/import_data.sh scripts/web_server.sh dags; do
    [[ -e "$f" ]] || die "$f is missing from this checkout"
  done
  mkdir -p "$LOGS" "$PIDS"
  local t0=$SECONDS
  log "repo $REPO${QUICK:+ (QUICK mode)}"
  step_data
  step_mlflow
  step_airflow
  step_dag
  step_web
  print_summary
  log "ready in $(( SECONDS - t0 ))s"
}

cmd_down() {
  stop web
  stop airflow-dag-processor
  stop airflow-scheduler
  stop airflow-apiserver
  if [[ -f "$REPO/.mlflow/server.pid" ]]; then
    scripts/mlflow_server.sh --stop 2>&1 | sed 's/^/    /' || true
    log "mlflow stopped"
  fi
  log "everything the stack started is stopped"
}

cmd_status() {
  local rc=0 name
  for name in airflow-apiserver airflow-scheduler airflow-dag-processor web; do
    if pid_alive "$PIDS/$name.pid"; then echo "  $name: running (pid $(cat "$PIDS/$name.pid"))"; else echo "  $name: stopped"; rc=3; fi
  done
  if pid_alive "$REPO/.mlflow/server.pid"; then echo "  mlflow: running (pid $(cat "$REPO/.mlflow/server.pid"))"; else echo "  mlflow: stopped"; rc=3; fi
  if pid_alive "$PIDS/airflow-apiserver.pid"; then
    airflow_env
    echo "  newest DAG run: $(AIRFLOW_URL="http://$HOST:$AIRFLOW_PORT" AIRFLOW_USER="$AIRFLOW_ADMIN_USER" \
      AIRFLOW_PASSWORD="$AIRFLOW_ADMIN_PASSWORD" XRAY_DAG_ID="$DAG_ID" "$PY" scripts/stack_airflow.py last 2>&1)"
  fi
  if pid_alive "$PIDS/web.pid"; then echo "  web /healthz: $(http_get "http://$HOST:$WEB_PORT/healthz")"; fi
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down|stop) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status   (make run / make stop; see the header of this file)" >&2; exit 2 ;;
esac
