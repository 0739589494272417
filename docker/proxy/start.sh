#!/bin/sh
# Entry of the `proxy` service: render the site's config with the body limit, run nginx.
set -eu
max="${PROXY_MAX_BODY:-51m}"
case "$max" in *[!0-9kKmM]*|"") echo "proxy: PROXY_MAX_BODY='$max' is not a size like 51m" >&2; exit 1;; esac
sed "s/@PROXY_MAX_BODY@/$max/" /docker/proxy/site.conf.template > /etc/nginx/conf.d/default.conf
exec nginx -g 'daemon off;'
