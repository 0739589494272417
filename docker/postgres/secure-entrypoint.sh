#!/bin/bash
# Entry point of the postgres service: refuse placeholder or weak passwords (superuser and the
# service roles) on every start, then hand over to the image's own docker-entrypoint.sh.
set -euo pipefail
source /docker/weak_secret.sh
bad=0
for var in POSTGRES_PASSWORD AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD WEB_DB_PASSWORD WEB_DB_READER_PASSWORD; do
    if weak_secret "$var" "${!var:-}"; then bad=1; fi
done
[ "$bad" = 0 ] || exit 78
exec docker-entrypoint.sh "$@"
