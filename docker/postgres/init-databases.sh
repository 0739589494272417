#!/usr/bin/env bash
# Creates one database and one owner role per service (Airflow, MLflow, the web app).
#
# Run by the postgres image's entrypoint (/docker-entrypoint-initdb.d) as the superuser,
# ONLY when the data volume is empty (first start). To re-run it: `docker compose down -v`
# (this deletes all data) or create the roles by hand with psql.
#
# Names and passwords come from the environment (docker-compose.yaml passes them from .env);
# values go through psql variables (:"ident" / :'literal'), so they are quoted safely.
set -euo pipefail

create_db() {
    local user="$1" password="$2" db="$3"
    if [[ -z "$user" || -z "$password" || -z "$db" ]]; then
        echo "init-databases: missing user/password/database for '$db' (check .env)" >&2
        exit 1
    fi
    echo "init-databases: creating role '$user' and database '$db'"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v user="$user" -v password="$password" -v db="$db" <<'SQL'
CREATE ROLE :"user" WITH LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user" ENCODING 'UTF8';
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
}

create_db "${AIRFLOW_DB_USER:-airflow}" "${AIRFLOW_DB_PASSWORD:-}" "${AIRFLOW_DB_NAME:-airflow}"
create_db "${MLFLOW_DB_USER:-mlflow}"   "${MLFLOW_DB_PASSWORD:-}"  "${MLFLOW_DB_NAME:-mlflow}"
create_db "${WEB_DB_USER:-web}"         "${WEB_DB_PASSWORD:-}"     "${WEB_DB_NAME:-web}"

# The drift DAG's login on the web database (issue 25 item 7): it may connect and read, nothing
# more. Read-only by default (no writes even where a grant slipped); the SELECT grants on the
# drift columns follow the site's migrations (docker/web/grant_reader.py, run by web-init).
reader="${WEB_DB_READER_USER:-web_reader}" reader_pw="${WEB_DB_READER_PASSWORD:-}"
if [[ -z "$reader_pw" ]]; then
    echo "init-databases: missing WEB_DB_READER_PASSWORD for the read-only role '$reader' (check .env)" >&2
    exit 1
fi
echo "init-databases: creating read-only role '$reader' on database '${WEB_DB_NAME:-web}'"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "${WEB_DB_NAME:-web}" \
    -v user="$reader" -v password="$reader_pw" -v db="${WEB_DB_NAME:-web}" <<'SQL'
CREATE ROLE :"user" WITH LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
ALTER ROLE :"user" SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE :"db" TO :"user";
GRANT USAGE ON SCHEMA public TO :"user";
SQL
echo "init-databases: done"
