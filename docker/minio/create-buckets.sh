#!/bin/sh
# One-shot run by the `createbuckets` service (profile `minio`, minio/mc image) after MinIO is healthy.
# Idempotent: safe on every `docker compose up`.
#  - buckets: MLflow artifacts and the DVC remote
#  - one service user per bucket, each with a policy scoped to its own bucket (issue 11, item 10):
#    MLflow's keys cannot touch the data, DVC's keys cannot touch the models, the web app has none
#    (MLflow proxies artifacts). On AWS S3 the same two IAM policies apply (docs/operations.md, "Production stack").
set -eu

: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set (see .env.example)}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set (see .env.example)}"
: "${MLFLOW_S3_ACCESS_KEY_ID:?MLFLOW_S3_ACCESS_KEY_ID is not set (see .env.example)}"
: "${MLFLOW_S3_SECRET_ACCESS_KEY:?MLFLOW_S3_SECRET_ACCESS_KEY is not set (see .env.example)}"
: "${DVC_S3_ACCESS_KEY_ID:?DVC_S3_ACCESS_KEY_ID is not set (see .env.example)}"
: "${DVC_S3_SECRET_ACCESS_KEY:?DVC_S3_SECRET_ACCESS_KEY is not set (see .env.example)}"
# the root password and the two keys this job creates: no placeholders (issue 25 item 10)
. "${XRAY_WEAK_SECRET_SH:-/docker/weak_secret.sh}"
bad=0
for var in MINIO_ROOT_PASSWORD MLFLOW_S3_SECRET_ACCESS_KEY DVC_S3_SECRET_ACCESS_KEY; do
    eval "value=\${$var}"
    if weak_secret "$var" "$value"; then bad=1; fi
done
[ "$bad" = 0 ] || exit 78
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

# policy_for BUCKET: read-write on that bucket only
policy_for() {
    cat <<JSON
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": ["arn:aws:s3:::$1"]},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": ["arn:aws:s3:::$1/*"]}
]}
JSON
}

setup() {  # setup BUCKET USER SECRET
    mc mb --ignore-existing "xray/$1"
    mc version enable "xray/$1" >/dev/null 2>&1 || true   # keep old objects on overwrite
    policy_for "$1" > "/tmp/policy-$1.json"
    mc admin policy create xray "rw-$1" "/tmp/policy-$1.json"
    # `user add` updates the secret if the user exists; re-attaching may be an error: tolerate it
    mc admin user add xray "$2" "$3"
    mc admin policy attach xray "rw-$1" --user "$2" 2>/dev/null || mc admin user info xray "$2" | grep -q "rw-$1"
}
setup "$MLFLOW_BUCKET" "$MLFLOW_S3_ACCESS_KEY_ID" "$MLFLOW_S3_SECRET_ACCESS_KEY"
setup "$DVC_BUCKET" "$DVC_S3_ACCESS_KEY_ID" "$DVC_S3_SECRET_ACCESS_KEY"
echo "create-buckets: '$MLFLOW_BUCKET' (user $MLFLOW_S3_ACCESS_KEY_ID) and '$DVC_BUCKET' (user $DVC_S3_ACCESS_KEY_ID) ready, each scoped to its bucket"
