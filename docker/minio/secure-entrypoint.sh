#!/bin/sh
# Entry point of the minio service: refuse a placeholder or weak root password (issue 25 item 10),
# then hand over to the image's own entry point. POSIX sh: the MinIO image has no bash or Python.
set -eu
. "${XRAY_WEAK_SECRET_SH:-/docker/weak_secret.sh}"
if weak_secret MINIO_ROOT_PASSWORD "${MINIO_ROOT_PASSWORD:-}"; then exit 78; fi
if [ -x /usr/bin/docker-entrypoint.sh ]; then exec /usr/bin/docker-entrypoint.sh "$@"; fi
exec "$@"
