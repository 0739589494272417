#!/bin/sh
# Entry of the `proxy` service: render the site's config (body limits per route, trusted TLS
# terminators), run nginx.
set -eu
template="${PROXY_TEMPLATE:-/docker/proxy/site.conf.template}"
out="${PROXY_CONF_OUT:-/etc/nginx/conf.d/default.conf}"
size() {   # NAME VALUE: a size like 64k or 51m, nothing else reaches the config
    case "$2" in *[!0-9kKmM]*|"") echo "proxy: $1='$2' is not a size like 51m" >&2; exit 1;; esac
}
upload="${PROXY_MAX_BODY:-510m}" api="${PROXY_API_MAX_BODY:-51m}" small="${PROXY_SMALL_MAX_BODY:-64k}"
size PROXY_MAX_BODY "$upload"; size PROXY_API_MAX_BODY "$api"; size PROXY_SMALL_MAX_BODY "$small"
# PROXY_TLS_TERMINATORS: comma list of addresses/CIDRs whose X-Forwarded-Proto/-For are believed
geo=""
for net in $(printf '%s' "${PROXY_TLS_TERMINATORS:-}" | tr ',' ' '); do
    case "$net" in *[!0-9a-fA-F.:/]*) echo "proxy: PROXY_TLS_TERMINATORS entry '$net' is not an address" >&2; exit 1;; esac
    geo="$geo    $net 1;\n"
done
sed -e "s/@PROXY_MAX_BODY@/$upload/g" -e "s/@PROXY_API_MAX_BODY@/$api/g" \
    -e "s/@PROXY_SMALL_MAX_BODY@/$small/g" -e "s#@PROXY_TLS_TERMINATORS@#$geo#" "$template" > "$out"
exec nginx -g 'daemon off;'
