# Stand-in for nginx:1.28-bookworm from Debian bookworm's nginx (1.22 + Debian security fixes):
# sites from /etc/nginx/conf.d/*.conf, foreground, logs to stdout/stderr, as in the official image.
ARG BASE=xray-local/debian:bookworm
FROM ${BASE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light; \
    rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*; \
    ln -sf /dev/stdout /var/log/nginx/access.log; ln -sf /dev/stderr /var/log/nginx/error.log
STOPSIGNAL SIGQUIT
EXPOSE 80
CMD ["nginx", "-g", "daemon off;"]
