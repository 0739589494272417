#!/bin/sh
# One-shot run by the `createbuckets` service (minio/mc image) after MinIO is healthy.
# Idempotent: safe on every `docker compose up`.
#  - buckets: MLflow artifacts and the DVC remote
#  - a service account (S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY) with read-write access,
#    so MLflow and Airflow never hold the MinIO root credentials.
set -eu

: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set (see .env.example)}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set (see .env.example)}"
: "${S3_ACCESS_KEY_ID:?S3_ACCESS_KEY_ID is not set (see .env.example)}"
: "${S3_SECRET_ACCESS_KEY:?S3_SECRET_ACCESS_KEY is not set (see .env.example)}"
MLFLOW_BUCKET="${MLFLOW_BUCKET:-mlflow}"
DVC_BUCKET="${DVC_BUCKET:-dvc}"
MINIO_URL="${MINIO_URL:-http://minio:9000}"

# MinIO may report healthy a moment before it accepts admin calls: retry the alias.
i=0
until mc alias set xray "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
    i=$((i + 1))
    if [ "$i" -ge 30 ]; then echo "create-buckets: MinIO at $MINIO_URL not reachable" >&2; exit 1; fi
    sleep 2
done

for bucket in "$MLFLOW_BUCKET" "$DVC_BUCKET"; do
    mc mb --ignore-existing "xray/$bucket"
    mc version enable "xray/$bucket" >/dev/null 2>&1 || true   # keep old objects on overwrite
done

# (Re)create the service user; `user add` updates the secret if the user exists.
mc admin user add xray "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY"
# Attaching an already attached policy is an error on some mc releases: tolerate it.
mc admin policy attach xray readwrite --user "$S3_ACCESS_KEY_ID" 2>/dev/null || \
    mc admin user info xray "$S3_ACCESS_KEY_ID" | grep -q readwrite
echo "create-buckets: buckets '$MLFLOW_BUCKET' and '$DVC_BUCKET' ready, service user '$S3_ACCESS_KEY_ID' has readwrite"
