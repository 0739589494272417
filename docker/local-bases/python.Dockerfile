# Stand-in for python:3.11-slim-bookworm, from Debian packages only (no registry needed).
# Same layout where the project relies on it: `python`/`pip` on PATH, venv support, CA bundle.
ARG BASE=xray-local/debian:bookworm
FROM ${BASE}
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    ln -s /usr/bin/python3.11 /usr/local/bin/python; \
    ln -s /usr/bin/python3.11 /usr/local/bin/python3
CMD ["python3"]
