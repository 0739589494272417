#!/bin/sh
# Build stage of the Dockerfile: a self-contained venv in /opt/venv from one lock of requirements/
# (scripts/install_locked.sh: hash-checked; --torch adds torch from TORCH_INDEX_URL), then drop
# what never runs: bytecode caches (the images set PYTHONDONTWRITEBYTECODE) and the
# test suites shipped inside numerical wheels (~100 MB).
#   docker/build_venv.sh LOCK [--torch]
set -eu
if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi
python -m venv /opt/venv
/tmp/install_locked.sh /opt/venv/bin/python "$@"
find /opt/venv -type d -name '__pycache__' -prune -exec rm -rf {} +
site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for pkg in numpy scipy pandas sklearn matplotlib pyarrow; do
    if [ -d "$site/$pkg" ]; then find "$site/$pkg" -type d -name tests -prune -exec rm -rf {} +; fi
done
du -sh /opt/venv
