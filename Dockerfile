#
# One image definition for the whole platform, three targets sharing every layer but the last:
#
#   docker build --target airflow -t xray-platform-airflow .   # api-server, scheduler, dag-processor, triggerer, celery workers
#   docker build --target mlflow  -t xray-platform-mlflow  .   # scripts/mlflow_server.sh
#   docker build --target web     -t xray-platform-web     .   # scripts/web_server.sh (gunicorn)
#
# docker-compose.yaml builds all three. Torch is the CPU build from the official CPU index
# (build arg TORCH_INDEX_URL); a GPU training worker is the same Dockerfile built with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
# (see the `gpu` profile in docker-compose.yaml). Versions come from requirements.txt.
# No `# syntax=` line: the engine's built-in Dockerfile frontend is used, so building needs no
# registry. Without a registry at all, scripts/docker_bases.sh makes PYTHON_IMAGE from Debian
# packages and scripts/stack_images.sh passes it; where only PyPI is reachable,
# TORCH_INDEX_URL=https://pypi.org/simple (the CUDA-enabled PyPI build, bigger, runs on CPU too).
# A TLS-inspecting proxy's CA bundle reaches pip as the optional build secret `pip_cert`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

############################ builder: a self-contained venv in /opt/venv ############################
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
# 1. torch + torchvision, pinned to requirements.txt's versions, from TORCH_INDEX_URL (CPU by default).
# 2. everything else from requirements.txt, minus the CUDA runtime wheels that the PyPI torch
#    build pulls in (nvidia-*, cuda-*, triton) and test-only tools (pytest, playwright).
RUN --mount=type=secret,id=pip_cert set -eux; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    grep -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/req-torch.txt; \
    test "$(wc -l < /tmp/req-torch.txt)" -eq 2; \
    grep -vE '^(torch|torchvision|triton|nvidia-[A-Za-z0-9_.-]+|cuda-[A-Za-z0-9_.-]+|playwright|pytest|pytest-timeout|moto)==' \
        /tmp/requirements.txt | grep -vE '^\s*(#|$)' > /tmp/req-rest.txt; \
    pip install --index-url "${TORCH_INDEX_URL}" -r /tmp/req-torch.txt; \
    pip install -r /tmp/req-rest.txt; \
    pip check; \
    find /opt/venv -type d -name '__pycache__' -prune -exec rm -rf {} +; \
    # test suites shipped inside numerical wheels are never imported at runtime (~100 MB)
    site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
    for pkg in numpy scipy pandas sklearn matplotlib pyarrow; do \
        find "$site/$pkg" -type d -name tests -prune -exec rm -rf {} +; \
    done

############################ runtime: what every service shares ############################
FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=50000
# git: DVC and the DAG's "pull the newest data pointer"; rsync: scripts/import_data.sh (a data
# import run in a container); tini: PID 1 that forwards signals.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends git rsync tini ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --uid "${APP_UID}" --gid 0 --create-home --home-dir /home/xray --shell /bin/bash xray
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_HOME=/opt/xray \
    DJANGO_STATIC_ROOT=/opt/xray/staticfiles \
    XRAY_WEB_DATA_DIR=/opt/xray/.local/web \
    MPLCONFIGDIR=/tmp/matplotlib \
    DVC_NO_ANALYTICS=1 \
    GIT_PYTHON_REFRESH=quiet
WORKDIR /opt/xray
# The code last, so editing it never re-installs dependencies. .dockerignore keeps the venv,
# data, caches, runs and secrets out. Owned by root and not writable by group or others: the app
# user (group 0) runs this code but cannot change it (issue 25 item 9).
COPY --chown=root:root . /opt/xray
# the project itself, editable (the dependencies are the venv's, from the lock): `pipeline`,
# `diagnosis` and `xray_site` importable from anywhere, no PYTHONPATH
RUN pip install --no-deps --no-build-isolation --no-cache-dir -e /opt/xray
# Code read-only to the app user; then the mount points of the named volumes (and the few state
# dirs), owned by the app user so new volumes inherit it.
RUN set -eux; \
    chmod -R go-w /opt/xray; \
    chmod 0755 docker/*.py docker/*.sh docker/*/*.sh docker/*/*.py; \
    if ls scripts/*.sh >/dev/null 2>&1; then chmod 0755 scripts/*.sh; fi; \
    state="/opt/xray/runs /opt/xray/.cache /opt/xray/.mlflow /opt/xray/media /opt/xray/staticfiles \
           /opt/xray/.local /opt/xray-repo /opt/dvc-remote /home/xray"; \
    mkdir -p $state /home/xray/.cache; \
    chown -R xray:0 $state; \
    chmod -R g=u $state
USER xray
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/xray/docker/entrypoint.sh"]

############################ mlflow: tracking server + registry ############################
FROM runtime AS mlflow
EXPOSE 5000
CMD ["scripts/mlflow_server.sh"]

############################ airflow: every Airflow component ############################
FROM runtime AS airflow
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/xray/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
USER root
RUN set -eux; \
    mkdir -p /opt/airflow/logs /opt/airflow/auth; \
    chown -R xray:0 /opt/airflow; \
    chmod -R g=u /opt/airflow
USER xray
EXPOSE 8080 8793 8974
CMD ["airflow", "version"]

############################ web: Django under gunicorn ############################
FROM runtime AS web
# Static files are collected at build time (whitenoise serves them); the throwaway key only
# lets settings import, it never reaches a running container.
RUN DJANGO_SECRET_KEY=collectstatic-only-not-a-secret DJANGO_DEBUG=0 \
    python django_app/manage.py collectstatic --noinput
EXPOSE 8000
CMD ["scripts/web_server.sh"]

############################ orthanc: the local PACS, from Debian's packages ############################
# Orthanc runs as its own process; the platform talks to it over HTTP/DICOMweb and DICOM only
# (no plug-in code of ours: Orthanc's Python plug-in is AGPL). docker/orthanc.json reads its
# password from the environment (ORTHANC_PASSWORD).
FROM debian:bookworm-slim AS orthanc
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        orthanc orthanc-dicomweb curl ca-certificates && rm -rf /var/lib/apt/lists/*
COPY docker/orthanc.json /etc/orthanc/xray.json
EXPOSE 8042 4242
USER orthanc
CMD ["Orthanc", "/etc/orthanc/xray.json"]
