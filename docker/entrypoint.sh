#!/bin/sh
# Entry point of every platform container (after tini): refuse placeholder or weak secrets, then
# run the service's command.
set -e
python /opt/xray/docker/check_secrets.py
exec "$@"
