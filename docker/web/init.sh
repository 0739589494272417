#!/usr/bin/env bash
# One-shot run by the `web-init` service before `web` starts: apply the Django migrations to the
# web database, and create (or update) the doctor account named in .env when there is one.
# Idempotent: safe on every `docker compose up`.
set -euo pipefail
cd "${APP_HOME:-/opt/xray}"
python django_app/manage.py migrate --noinput
# the drift DAG's read-only role: SELECT on the columns it reads, after the schema exists
python docker/web/grant_reader.py
if [[ -n "${XRAY_DOCTOR_USERNAME:-}" ]]; then
    : "${XRAY_DOCTOR_PASSWORD:?DOCTOR_USERNAME is set but DOCTOR_PASSWORD is empty (see .env.example)}"
    python django_app/manage.py create_doctor "$XRAY_DOCTOR_USERNAME" --update
else
    echo "web-init: no DOCTOR_USERNAME in .env: no doctor account created" \
         "(later: docker compose run --rm web-init python django_app/manage.py create_doctor NAME)"
fi
python django_app/manage.py check --deploy --fail-level ERROR
echo "web-init: done"
