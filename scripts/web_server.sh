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

# DEBUG off unless asked for (issue 25 item 17): no debug pages with settings and tracebacks.
# Development mode then needs a secret key: one is generated once and kept readable by its owner
# only under .local/secrets (production sets DJANGO_SECRET_KEY itself). collectstatic below gives
# whitenoise the files it serves with DEBUG off.
export DJANGO_DEBUG="${DJANGO_DEBUG:-0}"
if [ -z "${DJANGO_SECRET_KEY:-}" ] && [ "${DJANGO_ENV:-development}" = "development" ]; then
  secrets_dir="${XRAY_SECRETS_DIR:-$REPO/.local/secrets}"
  (umask 077 && mkdir -p "$secrets_dir" && chmod 700 "$secrets_dir" &&
   { [ -s "$secrets_dir/django_secret_key" ] ||
     "$PY" -c 'import secrets; print(secrets.token_urlsafe(50))' > "$secrets_dir/django_secret_key"; })
  DJANGO_SECRET_KEY="$(cat "$secrets_dir/django_secret_key")"
  export DJANGO_SECRET_KEY
fi

"$PY" manage.py migrate --noinput
# (the web image collected them when it was built, into a tree the app user cannot write)
[ "${XRAY_STATIC_COLLECTED:-0}" = 1 ] || "$PY" manage.py collectstatic --noinput --verbosity 0

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
