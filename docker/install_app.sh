#!/bin/sh
# Last layer of every Python target (run as root from /opt/xray, after the venv and the code are
# copied): the project installed editable, without dependencies (they are the venv's, from the
# lock); the code made read-only to the app user; the mount points of the named volumes (and the
# few state dirs) owned by the app user so new volumes inherit it.
#   docker/install_app.sh [--no-project]
set -eux
if [ "${1:-}" != --no-project ]; then
    pip install --no-deps --no-build-isolation --no-cache-dir -e /opt/xray
fi
chmod -R go-w /opt/xray
chmod 0755 docker/*.py docker/*.sh docker/*/*.sh docker/*/*.py
if ls scripts/*.sh >/dev/null 2>&1; then chmod 0755 scripts/*.sh; fi
state="/opt/xray/runs /opt/xray/.cache /opt/xray/.mlflow /opt/xray/media /opt/xray/staticfiles
       /opt/xray/.local /opt/xray-repo /opt/dvc-remote /home/xray"
mkdir -p $state /home/xray/.cache
chown -R xray:0 $state
chmod -R g=u $state
