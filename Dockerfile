#
# One image definition for the whole platform; each target has its own virtual environment, built
# from its own lock (requirements/, compiled by scripts/lock.sh from pyproject.toml's extras):
#
#   docker build --target airflow -t xray-platform-airflow .   # requirements/airflow.txt + torch: api-server, scheduler, dag-processor, triggerer, celery workers
#   docker build --target mlflow  -t xray-platform-mlflow  .   # requirements/mlflow.txt: scripts/mlflow_server.sh
#   docker build --target web     -t xray-platform-web     .   # requirements/web.txt (no torch): scripts/web_server.sh (gunicorn), the PACS worker
#   docker build --target orthanc -t xray-platform-orthanc .   # the local PACS from Debian's packages (no Python)
#
# docker-compose.yaml builds all four. Every lock is installed with --require-hashes
# (scripts/install_locked.sh). Torch (airflow only) is the CPU build from the official CPU index
# (build arg TORCH_INDEX_URL; those wheels are not PyPI's files, so that one step is not
# hash-checked); a GPU training worker is the same Dockerfile built with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
# (see the `gpu` profile in docker-compose.yaml). No `# syntax=` line: the engine's built-in
# Dockerfile frontend is used, so building needs no registry. Without a registry at all,
# scripts/docker_bases.sh makes PYTHON_IMAGE from Debian packages and scripts/stack_images.sh
# passes it; where only PyPI is reachable, TORCH_INDEX_URL=https://pypi.org/simple (the
# CUDA-enabled PyPI build, bigger, runs on CPU too; hash-checked against requirements/torch.txt).
# A TLS-inspecting proxy's CA bundle reaches pip as the optional build secret `pip_cert`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim

############################ builder: the locks and the installer ############################
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY scripts/install_locked.sh docker/build_venv.sh /tmp/

# One venv per target, each in its own stage with its own lock (built only for the targets that
# need it; editing one lock rebuilds that venv alone).
FROM builder AS venv-web
COPY requirements/web.txt /tmp/requirements/
RUN --mount=type=secret,id=pip_cert /tmp/build_venv.sh /tmp/requirements/web.txt

FROM builder AS venv-mlflow
COPY requirements/mlflow.txt /tmp/requirements/
RUN --mount=type=secret,id=pip_cert /tmp/build_venv.sh /tmp/requirements/mlflow.txt

FROM builder AS venv-airflow
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements/airflow.txt requirements/torch.txt /tmp/requirements/
RUN --mount=type=secret,id=pip_cert TORCH_INDEX_URL="${TORCH_INDEX_URL}" \
    /tmp/build_venv.sh /tmp/requirements/airflow.txt --torch

############################ runtime: what every service shares (no venv, no code) ############################
FROM ${PYTHON_IMAGE} AS runtime
ARG APP_UID=50000
# tini: PID 1 that forwards signals.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends tini ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    useradd --uid "${APP_UID}" --gid 0 --create-home --home-dir /home/xray --shell /bin/bash xray
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
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/xray/docker/entrypoint.sh"]

# Each target below: its venv, then the code last, so editing the code never re-installs
# dependencies. .dockerignore keeps the venv, data, caches, runs and secrets out. The code is owned
# by root and not writable by group or others: the app user (group 0) runs it but cannot change it
# (issue 25 item 9). docker/install_app.sh: the project, editable (`pipeline`, `diagnosis`,
# `xray_site` importable from anywhere, the `xray` command), and the state directories.

############################ mlflow: tracking server + registry ############################
FROM runtime AS mlflow
COPY --from=venv-mlflow /opt/venv /opt/venv
COPY --chown=root:root . /opt/xray
# the server runs scripts of this repository only: the project itself is not installed
RUN docker/install_app.sh --no-project
USER xray
EXPOSE 5000
CMD ["scripts/mlflow_server.sh"]

############################ airflow: every Airflow component ############################
FROM runtime AS airflow
# git: DVC and the DAG's "pull the newest data pointer"; rsync: scripts/import_data.sh (a data
# import run in a container)
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends git rsync; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /opt/airflow/logs /opt/airflow/auth; \
    chown -R xray:0 /opt/airflow; \
    chmod -R g=u /opt/airflow
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/xray/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
COPY --from=venv-airflow /opt/venv /opt/venv
COPY --chown=root:root . /opt/xray
RUN docker/install_app.sh
USER xray
EXPOSE 8080 8793 8974
CMD ["airflow", "version"]

############################ web: Django under gunicorn, the PACS worker ############################
FROM runtime AS web
COPY --from=venv-web /opt/venv /opt/venv
COPY --chown=root:root . /opt/xray
# Static files are collected at build time (whitenoise serves them); the throwaway key only
# lets settings import, it never reaches a running container.
RUN set -eux; \
    docker/install_app.sh; \
    DJANGO_SECRET_KEY=collectstatic-only-not-a-secret DJANGO_DEBUG=0 \
        python django_app/manage.py collectstatic --noinput
# scripts/web_server.sh then leaves them alone: the code tree is read-only at run time
ENV XRAY_STATIC_COLLECTED=1
USER xray
EXPOSE 8000
CMD ["scripts/web_server.sh"]

############################ orthanc: the local PACS, from Debian's packages ############################
# Orthanc runs as its own process; the platform talks to it over HTTP/DICOMweb and DICOM only
# (no plug-in code of ours: Orthanc's Python plug-in is AGPL). docker/orthanc.json reads its
# password from the environment (ORTHANC_PASSWORD).
FROM ${DEBIAN_IMAGE} AS orthanc
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        orthanc orthanc-dicomweb curl ca-certificates && rm -rf /var/lib/apt/lists/* \
    && install -d -o orthanc -g orthanc -m 0750 /var/lib/orthanc/db
# (the volume mounted there starts as a copy of this directory: owned by orthanc, not root)
COPY docker/orthanc.json /etc/orthanc/xray.json
EXPOSE 8042 4242
USER orthanc
CMD ["Orthanc", "/etc/orthanc/xray.json"]
