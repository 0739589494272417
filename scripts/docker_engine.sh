#!/usr/bin/env bash
# Make sure a Docker engine answers (used by `make stack-test` / `make test`):
#   exit 0  `docker info` answers (already running, or dockerd started here as root)
#   exit 77 no engine can be had here (not root and none running, or dockerd does not start):
#           the caller skips the container test and says why
# Debian's docker.io is installed by scripts/system_deps.sh; dockerd is started in the background
# (log /tmp/xray-dockerd.log), as on a CI machine without systemd.
set -uo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/docker_lib.sh"
$DOCKER info >/dev/null 2>&1 && exit 0
if ! command -v dockerd >/dev/null; then
    echo "docker_engine: no dockerd (Debian package docker.io; make system-deps installs it as root)" >&2; exit 77
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "docker_engine: no Docker engine answers and starting one needs root" >&2; exit 77
fi
echo "docker_engine: starting dockerd (log /tmp/xray-dockerd.log)" >&2
nohup dockerd > /tmp/xray-dockerd.log 2>&1 &
for _ in $(seq 1 60); do
    $DOCKER info >/dev/null 2>&1 && exit 0
    sleep 1
done
echo "docker_engine: dockerd did not answer in 60 s (tail of /tmp/xray-dockerd.log below)" >&2
tail -n 15 /tmp/xray-dockerd.log >&2
exit 77
