# Stand-in for redis:7.2-bookworm from Debian's redis-server (7.0): `redis-server` / `redis-cli`
# on PATH, data in /data, run as the redis user.
ARG BASE=xray-local/debian:bookworm
FROM ${BASE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /data; chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
