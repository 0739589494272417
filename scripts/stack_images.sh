#!/usr/bin/env bash
# Build the platform's images (targets mlflow, airflow, web and orthanc of the one Dockerfile: every
# image docker-compose.yaml builds) with BuildKit, tagged as docker-compose.yaml names them. Layers
# are cached: after a code change only the COPY of the code and what follows it are rebuilt.
#   PYTHON_IMAGE     base image (default python:3.11-slim-bookworm; scripts/docker_bases.sh makes
#                    xray-local/python:3.11-bookworm where no registry is reachable)
#   DEBIAN_IMAGE     base of the orthanc image (default debian:bookworm-slim; xray-local/debian:bookworm)
#   TORCH_INDEX_URL  where torch comes from (default the official CPU index)
#   XRAY_IMAGE_PREFIX (xray-platform)  XRAY_IMAGE_TAG (latest)
#   XRAY_TARGETS     which targets (default "mlflow airflow web orthanc"; the first three have
#                    their own venv and lock)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/docker_lib.sh"
prefix="${XRAY_IMAGE_PREFIX:-xray-platform}" tag="${XRAY_IMAGE_TAG:-latest}"
args=(--build-arg "PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
      --build-arg "DEBIAN_IMAGE=${DEBIAN_IMAGE:-debian:bookworm-slim}"
      --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
cert="$(pip_cert)"
[[ -n "$cert" && -f "$cert" ]] && args+=(--secret "id=pip_cert,src=$cert")
for target in ${XRAY_TARGETS:-mlflow airflow web orthanc}; do
    t0=$SECONDS
    $DOCKER build --progress "${BUILD_PROGRESS:-plain}" "${args[@]}" --target "$target" \
        -t "$prefix-$target:$tag" "$REPO"
    echo "stack_images: $prefix-$target:$tag built in $(( SECONDS - t0 ))s," \
         "$($DOCKER image inspect -f '{{.Size}}' "$prefix-$target:$tag" | awk '{printf "%.2f GB", $1/1e9}')"
done
