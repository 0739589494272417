# Stand-in for postgres:15-bookworm from Debian's postgresql-15. It honours the official image's
# contract that docker-compose.yaml relies on: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB,
# PGDATA=/var/lib/postgresql/data, /docker-entrypoint-initdb.d/*.sh|*.sql run once on an empty
# volume, pg_isready on PATH.
ARG BASE=xray-local/debian:bookworm
FROM ${BASE}
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends postgresql-15 gosu; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /docker-entrypoint-initdb.d /var/lib/postgresql/data /var/run/postgresql; \
    chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql; \
    chmod 2777 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
