#!/usr/bin/env bash
# The doctors' site: apply migrations, collect static files, then run gunicorn in the foreground.
# Used by `make web` / `make run` and by the web container. Configuration is the environment
# (docs/configuration.md, "The web site"); with none, it serves http://127.0.0.1:8000 from
# <repo>/.local/web (SQLite, uploads) using the champion of the MLflow server at 127.0.0.1:5000.
#
#   XRAY_DOCTOR_USERNAME + XRAY_DOCTOR_PASSWORD  create/update that doctor account at start
#   (development only, when there is no account at all: a `doctor` account with a random password
#    is created and the password printed once)
# Extra arguments go to gunicorn (e.g. --bind 0.0.0.0:8000).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
cd "$REPO/django_app"

"$PY" manage.py migrate --noinput
"$PY" manage.py collectstatic --noinput --verbosity 0

if [ -n "${XRAY_DOCTOR_USERNAME:-}" ]; then
  if [ -z "${XRAY_DOCTOR_PASSWORD:-}" ]; then
    echo "web_server.sh: XRAY_DOCTOR_USERNAME is set but XRAY_DOCTOR_PASSWORD is not" >&2
    exit 2
  fi
  "$PY" manage.py create_doctor "$XRAY_DOCTOR_USERNAME" --update ${XRAY_DOCTOR_STAFF:+--staff}
elif [ "${DJANGO_ENV:-development}" = "development" ]; then
  "$PY" manage.py create_doctor doctor --if-no-users --random-password
fi

exec "$PY" -m gunicorn --config gunicorn.conf.py xray_site.wsgi:application "$@"
