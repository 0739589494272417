#!/usr/bin/env bash
# Local stand-ins for the public base images, for a Docker engine that cannot pull from a registry.
# Built from Debian packages only (debootstrap + apt), tagged xray-local/*; the stack uses them when
# .env (or the environment) says so, which scripts/stack_test.sh does:
#   PYTHON_IMAGE=xray-local/python:3.11-bookworm   (build arg of the Dockerfile; public: python:3.11-slim-bookworm)
#   DEBIAN_IMAGE=xray-local/debian:bookworm        (build arg, the orthanc image; public: debian:bookworm-slim)
#   POSTGRES_IMAGE=xray-local/postgres:15-bookworm (public: postgres:15-bookworm; same POSTGRES_* contract)
#   REDIS_IMAGE=xray-local/redis:bookworm          (public: redis:7.2-bookworm; Debian ships 7.0)
#   NGINX_IMAGE=xray-local/nginx:bookworm          (public: nginx:1.28-bookworm; Debian ships 1.22)
# Idempotent: an image that exists is kept (XRAY_REBUILD_BASES=1 rebuilds them all).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/docker_lib.sh"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DIR="$REPO/docker/local-bases"

have() { [[ "${XRAY_REBUILD_BASES:-0}" != 1 ]] && $DOCKER image inspect "$1" >/dev/null 2>&1; }

if ! have xray-local/debian:bookworm; then
    command -v debootstrap >/dev/null || { echo "docker_bases: debootstrap is not installed (make system-deps)" >&2; exit 1; }
    root="$(mktemp -d /tmp/xray-debootstrap.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    echo "docker_bases: debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" > "$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
    cat > "$root/etc/apt/sources.list" <<SRC
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
    # as in Docker's Debian images: no docs, no apt cache kept in layers
    printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
        > "$root/etc/dpkg/dpkg.cfg.d/docker-slim"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
    tar -C "$root" -c . | $DOCKER import - xray-local/debian:bookworm >/dev/null
    rm -f "$root.log"
fi
for spec in python:3.11-bookworm postgres:15-bookworm redis:bookworm nginx:bookworm; do
    name="${spec%%:*}"
    have "xray-local/$spec" && continue
    echo "docker_bases: building xray-local/$spec"
    $DOCKER build -q -t "xray-local/$spec" -f "$DIR/$name.Dockerfile" "$DIR" >/dev/null
done
$DOCKER image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep '^xray-local/' | sort
